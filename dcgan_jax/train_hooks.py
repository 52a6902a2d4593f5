"""What the training loop does at its periodic hooks: sample grids, digits quality and FID.

:class:`Sampler` generates images from the training state on every local device (EMA weights
when kept); :class:`DigitsQualityHook` scores them with the offline digits classifier (process 0),
:class:`InceptionFIDHook` with Inception-v3 against the training images (every process its
share). Each scalar they log goes through the run's writer; the files they keep
(``quality.json``, ``best_fid.json``, ``samples/``) are named here.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax import animation
from dcgan_jax import data
from dcgan_jax import durations as durations_lib
from dcgan_jax import generation
from dcgan_jax import json_files
from dcgan_jax import models
from dcgan_jax import run_logs
from dcgan_jax import sample_grid
from dcgan_jax import state as state_lib
from dcgan_jax.errors import UserError, finite_number, is_integer

# Tags folded into the run seed, one per independent stream of randomness, kept together so that
# none is used twice. (The data order uses its own tag inside dcgan_jax.data.)
INIT_TAG, TRAIN_TAG, SAMPLE_TAG, QUALITY_TAG, EVAL_TAG = 1, 2, 3, 4, 5
# Generated images per device per forward pass when scoring many samples (bounds host and device
# memory).
GENERATE_CHUNK = 250
QUALITY_FILE = 'quality.json'
# The best in-training FID so far: its step, value and protocol; its checkpoint (the whole state,
# restorable with `python -m dcgan_jax.evaluate --workdir=<workdir>/best_fid`) is kept in
# <workdir>/best_fid/checkpoints/<step>.
BEST_FID_FILE = 'best_fid.json'
BEST_FID_DIR = 'best_fid'
SAMPLES_DIR = 'samples'
# The quality bar of the default run (issue: digits quality after the default budget).
QUALITY_BAR = {'max_frechet_distance_ratio': 0.10, 'num_classes_covered': 10,
               'min_class_fraction': 0.03}


class Sampler:
  """Generates images from the current state on every local device of this process.

  G runs with train=False on the EMA weights where the run keeps them, its latents split over a
  1-D mesh of ``jax.local_devices()`` and its variables replicated there
  (:class:`dcgan_jax.generation.LocalGenerator`): the images are the ones one device would make.
  Grids and the digits quality come back to the host; FID's images stay on the devices, each
  chunk already split over them as the Inception extractor takes its batches.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    generator = models.generator_from_config(config)
    self._generation = generation.LocalGenerator(generator)
    self.num_classes = generator.num_classes
    self.output_activation = config.output_activation
    self.value_range = models.output_range(config.output_activation)
    self._chunk_size = GENERATE_CHUNK * self._generation.num_devices

  @property
  def num_devices(self) -> int:
    """The devices the images are generated on."""
    return self._generation.num_devices

  def variables(self, state: state_lib.GANState) -> dict[str, Any]:
    """G's sampling variables (EMA when kept), replicated over this process's devices.

    The shard_map step's state is used where it is (its arrays, not copies: the programs that
    read it are queued before the next step donates it); pmap's first local replica, or a fresh
    state not laid out for the step, is copied to every device.
    """
    return self._generation.replicate(state.sampling_variables(use_ema=True))

  def labels(self, num: int) -> np.ndarray | None:
    """The classes ``num`` samples are generated with (:func:`models.cycled_labels`)."""
    return models.cycled_labels(num, self.num_classes)

  def generate(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Images ``float32 [N, H, W, C]`` in the generator's range for latents ``[N, latent_dim]``
    (and, for a conditional generator, classes ``[N]``)."""
    return self._generation(variables, z, labels, chunk_size=self._chunk_size)

  def dispatch_generate(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
                        labels: np.ndarray | None = None) -> list[jax.Array]:
    """Queues :meth:`generate`'s programs and returns their outputs (chunks) without waiting.

    ``np.concatenate`` of the chunks gives :meth:`generate`'s images. The programs read
    ``variables`` in queue order, so later steps may donate the state they came from.
    """
    return self._generation.dispatch(variables, z, labels, chunk_size=self._chunk_size)

  def generate_uint8(self, variables: dict[str, Any], z: np.ndarray | jax.Array,
                     labels: np.ndarray | None = None,
                     chunk_size: int | None = None) -> list[jax.Array]:
    """Images ``uint8 [N, H, W, C]`` left on the devices (quantised as ``evaluation.to_uint8``),
    in chunks of ``chunk_size`` (default: as :meth:`generate`'s) split over the devices.

    For FID: the images go to the Inception network without a host round trip, and nothing
    waits for the devices here. With the extractor's batch size as ``chunk_size`` each chunk is
    one of its batches, laid out as it takes them (see
    :meth:`dcgan_jax.generation.LocalGenerator.dispatch`, which also says where a last chunk
    that does not split evenly over the devices lies).
    """
    return self._generation.dispatch(variables, z, labels,
                                     chunk_size=chunk_size or self._chunk_size,
                                     value_range=self.value_range)


def latents(seed: int, tag: int, num: int, latent_dim: int) -> jax.Array:
  """A fixed batch of latents ``[num, latent_dim]`` for a seed and purpose."""
  key = jax.random.fold_in(jax.random.key(seed), tag)
  return jax.random.normal(key, (num, latent_dim), jnp.float32)


def count_classes(count: int) -> str:
  """'1 class', '3 classes'."""
  return f'{count} class' if count == 1 else f'{count} classes'


class DigitsQualityHook:
  """Scores generated digits with :class:`dcgan_jax.quality.DigitsQuality` (process 0 only)."""

  def __init__(self, config: ml_collections.ConfigDict, sampler: Sampler):
    from dcgan_jax import quality  # pylint: disable=g-import-not-at-top  # Digits runs only.
    from dcgan_jax.evaluation import manifold  # pylint: disable=g-import-not-at-top

    self._manifold_metrics = manifold.METRICS  # Precision, recall, ... (None for tiny samples).

    cache_dir = config.get('quality_cache_dir', '') or None
    self._quality = quality.DigitsQuality.load_or_train(cache_dir)
    self._sampler = sampler
    self._latents = latents(int(config.seed), QUALITY_TAG,
                             int(config.get('num_quality_samples', 1000)),
                             int(config.latent_dim))
    # A conditional generator draws every digit equally often, and is also scored on whether
    # it draws the digit it was asked for.
    self._labels = sampler.labels(self._latents.shape[0])
    self.untrained: dict[str, Any] | None = None
    self.history: list[dict[str, Any]] = []

  def score(self, variables: dict[str, Any]) -> dict[str, Any]:
    images = self._sampler.generate(variables, self._latents, self._labels)
    return self._quality.score(images, value_range=self._sampler.value_range,
                               labels=self._labels)

  def score_untrained(self, variables: dict[str, Any],
                      recorded: dict[str, Any] | None = None) -> None:
    """Scores the untrained generator, or takes the score a checkpoint ``recorded`` of it."""
    usable = (isinstance(recorded, dict)
              and finite_number(recorded.get('frechet_distance')) is not None
              and is_integer(recorded.get('num_classes_covered')))
    self.untrained = dict(recorded) if usable else self.score(variables)
    accuracy = self.untrained.get('label_accuracy')
    logging.info('Digits quality of the untrained generator%s: Fréchet distance %.3f, %s '
                 'covered%s.', ' (recorded in the checkpoint)' if usable else '',
                 self.untrained['frechet_distance'],
                 count_classes(self.untrained['num_classes_covered']),
                 '' if accuracy is None else f', label accuracy {accuracy:.3f}')

  def write_untrained(self, writer) -> None:
    """The untrained generator's score as the step-0 point of the quality curves (a fresh start
    writes it; a resume keeps it), so that they start from where training did."""
    writer.write_scalars(0, self._scalars(self.untrained))

  def __call__(self, step: int, variables: dict[str, Any], writer) -> dict[str, Any]:
    result = self.score(variables)
    writer.write_scalars(step, self._scalars(result))
    # A step scored again (the final scores made again after a stop among them) replaces its
    # entry.
    self.history = [entry for entry in self.history if entry['step'] != step]
    self.history.append({'step': step, **jsonable(result)})
    return result

  def _scalars(self, result: dict[str, Any]) -> dict[str, Any]:
    """The ``quality/*`` scalars of a score."""
    scalars = {
        'quality/frechet_distance': result['frechet_distance'],
        'quality/num_classes_covered': result['num_classes_covered'],
        'quality/min_class_fraction': result['min_class_fraction'],
        'quality/mean_confidence': result['mean_confidence'],
    }
    for name in (*self._manifold_metrics, 'label_accuracy'):
      if result.get(name) is not None:
        scalars[f'quality/{name}'] = result[name]
    if self.untrained is not None:
      scalars['quality/frechet_distance_ratio'] = (result['frechet_distance']
                                                   / self.untrained['frechet_distance'])
    return scalars

  def keep_history(self, workdir: str, start_step: int) -> None:
    """A resumed run keeps the scores its earlier processes wrote into ``quality.json`` (at
    every score; they would be rewritten with this process's alone), up to the step it resumes
    from: later ones were of steps trained again now, and are scored again (the resume has
    already trimmed the file: :func:`set_aside_earlier_outputs`)."""
    try:
      with open(os.path.join(workdir, QUALITY_FILE), encoding='utf-8') as f:
        saved = json.load(f)
    except (OSError, ValueError):  # None yet, or unreadable: nothing to keep.
      return
    history = saved.get('history') if isinstance(saved, dict) else None
    if isinstance(history, list):
      self.history = [entry for entry in history if isinstance(entry, dict)
                      and is_integer(entry.get('step')) and entry['step'] <= start_step]

  def write_json(self, workdir: str, step: int, result: dict[str, Any], used_ema: bool) -> None:
    """Writes ``quality.json``: the latest score (the final one once the run has ended), the
    untrained one, their ratio and the bar, and the scores so far (``history``)."""
    json_files.write_json_atomically(
        os.path.join(workdir, QUALITY_FILE),
        _quality_summary(step, result, int(self._latents.shape[0]), used_ema, self.untrained,
                         self.history))


def _quality_summary(step: int, result: dict[str, Any], num_samples: int | None, used_ema: bool,
                     untrained: dict[str, Any] | None,
                     history: list[dict[str, Any]]) -> dict[str, Any]:
  """The contents of ``quality.json`` (:meth:`DigitsQualityHook.write_json`)."""
  summary = {'step': step, 'num_samples': num_samples, 'used_ema': used_ema, **jsonable(result)}
  if untrained is not None:
    ratio = result['frechet_distance'] / untrained['frechet_distance']
    summary['untrained_frechet_distance'] = float(untrained['frechet_distance'])
    summary['untrained_num_classes_covered'] = int(untrained['num_classes_covered'])
    summary['frechet_distance_ratio'] = float(ratio)
    summary['quality_bar'] = dict(QUALITY_BAR)
    summary['meets_quality_bar'] = bool(
        ratio <= QUALITY_BAR['max_frechet_distance_ratio']
        and result['num_classes_covered'] >= QUALITY_BAR['num_classes_covered']
        and result['min_class_fraction'] >= QUALITY_BAR['min_class_fraction'])
  summary['history'] = history
  return summary


def trim_quality_json(workdir: str, step: int) -> None:
  """Drops the scores of steps after ``step`` from ``quality.json``: a resume's, whether it
  scores quality or not, so that a stop before its next score leaves none of them behind.

  The latest kept score becomes the current one; with none kept (or a file this version cannot
  read) the file goes. The copy :func:`set_aside_earlier_outputs` made keeps it as it was.
  """
  path = os.path.join(workdir, QUALITY_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return
  if max(_scored_steps(saved), default=-1) <= step:
    return
  history = saved.get('history') if isinstance(saved.get('history'), list) else []
  kept = [entry for entry in history if isinstance(entry, dict)
          and is_integer(entry.get('step')) and entry['step'] <= step]
  try:
    latest = dict(kept[-1])
    untrained = None
    if 'untrained_frechet_distance' in saved:
      untrained = {'frechet_distance': saved['untrained_frechet_distance'],
                   'num_classes_covered': saved['untrained_num_classes_covered']}
    summary = _quality_summary(latest.pop('step'), latest, saved.get('num_samples'),
                               bool(saved.get('used_ema')), untrained, kept)
  except (IndexError, KeyError, TypeError, ZeroDivisionError):
    os.remove(path)
    return
  json_files.write_json_atomically(path, summary)


class InceptionFIDHook:
  """In-training Inception FID against the training images (needs ``inception_weights``).

  The protocol (generated and real image counts, preprocessing, EMA or not) is logged with every
  number: FID from ``eval_num_samples`` images is biased upwards and only comparable to FIDs of
  the same count; ``python -m dcgan_jax.evaluate`` gives the standard 50,000-sample number.

  Every process takes part: each generates and scores its share of the latents (and of the real
  images) on its own devices, and the feature statistics are summed across processes, so every
  process gets the same FID (process 0 logs it).

  With ``eval_precision_recall`` (default on) it also logs precision, recall, density and
  coverage (k = 3, :func:`dcgan_jax.evaluation.manifold_metrics`) on the same Inception
  features: FID mixes poor samples and missing modes into one number, these keep them apart.
  The features of every process's share are gathered for them (``eval_num_samples`` x 2048
  float32 per side, on the host).
  """

  def __init__(self, config: ml_collections.ConfigDict, sampler: Sampler, every_steps: int):
    from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

    self._evaluation = evaluation
    self._sampler = sampler
    num_samples = int(config.eval_num_samples)
    if num_samples < 2:
      raise UserError(f'eval_num_samples must be at least 2 (got {num_samples}); FID needs '
                      '2048+ samples to be meaningful, 50000 is the standard.')
    # Configs written before eval_preprocessing was a field have pytorch-fid's preprocessing.
    preprocessing = config.get('eval_preprocessing', 'pytorch_fid')
    if num_samples < jax.process_count():
      raise UserError(f'eval_num_samples ({num_samples}) must be at least the number of '
                      f'processes ({jax.process_count()}).')
    try:
      self._extractor = evaluation.InceptionExtractor.from_file(config.inception_weights,
                                                                preprocessing=preprocessing)
    except UserError as e:  # Its text names the file; the config's field is what to change.
      raise UserError(f'inception_weights: {e} Or set eval_every_steps=0 to train without '
                      'FID.') from e
    self._precision_recall = bool(config.get('eval_precision_recall', True))
    self.last_manifold: dict[str, float] = {}  # The latest precision, recall, ... (if on).
    real = data.load_all_images(config, max_examples=num_samples)
    self._real, self._real_features = self._statistics(
        [real[evaluation.process_share(len(real))]], len(real))
    share = evaluation.process_share(num_samples)
    # On the host once: every FID splits them over the devices chunk by chunk.
    self._latents = np.asarray(latents(int(config.seed), EVAL_TAG, num_samples,
                                       int(config.latent_dim))[share])
    # Generated in the extractor's batches: each chunk reaches Inception laid out as it is.
    self._chunk_size = getattr(self._extractor, 'batch_size', None)
    labels = sampler.labels(num_samples)  # Every class equally often (conditional G).
    self._labels = None if labels is None else labels[share]
    self.protocol = {'num_generated': num_samples, 'num_real': int(self._real.count),
                     'real': f'{config.dataset} ({config.get("split", "train")} split)',
                     'preprocessing': preprocessing,
                     'inception_weights': os.fspath(config.inception_weights)}
    # The period as resolved (configs may give it in epochs: eval_every_steps is -1 there).
    logging.info('FID every %d steps: %d generated vs %d %s images, preprocessing %s.',
                 every_steps, num_samples, self._real.count, self.protocol['real'],
                 preprocessing)

  def _statistics(self, uint8_chunks: list[np.ndarray | jax.Array], num_total: int):
    """Feature statistics of every process's images (a collective: all processes call it),
    and with precision/recall on, the features of all ``num_total`` images (else None).

    ``uint8_chunks``: this process's images, in chunks that concatenate to them.
    """
    stats = self._evaluation.FeatureStatistics()
    features = []
    if hasattr(self._extractor, 'device_batches'):
      # Features stay on the device and are summed there; one host copy of the sums at the end.
      for chunk in uint8_chunks:
        for out in self._extractor.device_batches(chunk):
          stats.update(out['pool'])
          if self._precision_recall:  # Otherwise no batch's features are kept.
            features.append(out['pool'])
    else:  # A stand-in extractor (tests): any callable mapping numpy uint8 images to features.
      features.append(self._extractor(np.concatenate([np.asarray(c) for c in uint8_chunks]))
                      ['pool'])
      stats.update(features[-1])
    stats = self._evaluation.allgather_statistics(stats, stats.dim)
    if not self._precision_recall:
      return stats, None
    mine = (np.concatenate([np.asarray(f, np.float32) for f in features]) if features
            else np.zeros((0, stats.dim), np.float32))
    return stats, self._evaluation.allgather_rows(mine, num_total)

  def __call__(self, step: int, variables: dict[str, Any], writer) -> float:
    """The FID at ``step``, on every process; process 0 writes and logs it."""
    fake, fake_features = self._statistics(
        self._sampler.generate_uint8(variables, self._latents, self._labels,
                                     chunk_size=self._chunk_size),
        self.protocol['num_generated'])
    fid = self._evaluation.frechet_distance(self._real, fake)
    k = self._evaluation.manifold.DEFAULT_K
    self.last_manifold = {}
    if fake_features is not None and min(len(fake_features), len(self._real_features)) > k:
      self.last_manifold = self._evaluation.manifold_metrics(self._real_features, fake_features,
                                                             k=k)
    if jax.process_index() == 0:
      writer.write_scalars(step, {'eval/fid': fid, **{f'eval/{name}': value for name, value
                                                      in self.last_manifold.items()}})
      manifold_text = ''.join(f', {name} {value:.3f}' for name, value
                              in self.last_manifold.items())
      logging.info('Step %d: FID %.3f%s (%d generated vs %d %s images, preprocessing %s).',
                   step, fid, manifold_text, self.protocol['num_generated'],
                   self.protocol['num_real'], self.protocol['real'],
                   self.protocol['preprocessing'])
    return fid


def fid_enabled(config: ml_collections.ConfigDict, durations: durations_lib.Durations) -> bool:
  """Whether in-training FID runs (the same answer on every process)."""
  return durations.eval_every_steps > 0 and bool(config.inception_weights)


def read_best_fid(workdir: str) -> float:
  """The best FID recorded by an earlier (interrupted) part of this run, else infinity."""
  path = os.path.join(workdir, BEST_FID_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      return float(json.load(f)['fid'])
  except (OSError, ValueError, KeyError, TypeError):
    return math.inf


def set_aside_earlier_outputs(workdir: str, step: int, aside) -> list[str]:
  """Moves what an earlier run left in the workdir and this one makes anew to ``aside``.

  A resume sets aside the sample grids of the steps after its checkpoint: the run killed
  between two checkpoints made them, this one trains those steps again (and, with other
  settings, may never make a grid at them), and ``progress.gif`` would show both runs; and
  keeps a copy of a ``quality.json`` that holds scores of those steps before rewriting it
  without them (:func:`trim_quality_json`). A fresh
  start (``step`` -1: the checkpoints were deleted, or the run was killed before its first)
  sets aside every grid and ``progress.gif``, and the earlier run's ``best_fid.json`` and
  ``best_fid/`` (else this run's FIDs were compared with the old best, never logged as "best
  FID so far", and the file named the old run's weights) and ``quality.json``. Nothing is
  deleted: they stay in ``aside`` (a ``rolled_back_logs/<time>/`` folder) as they were.

  Args:
    workdir: The run's directory.
    step: The step the run resumes from, -1 for a fresh start.
    aside: Where to (:func:`dcgan_jax.run_logs.new_aside_directory`).

  Returns:
    What was moved, as paths relative to the workdir.
  """
  moved = []

  def move(relative: str) -> None:
    if os.path.lexists(os.path.join(workdir, relative)):
      run_logs.move_aside(workdir, relative, aside)
      moved.append(relative)

  if step < 0:
    for relative in (BEST_FID_FILE, BEST_FID_DIR, QUALITY_FILE,
                     os.path.join(SAMPLES_DIR, animation.PROGRESS_GIF)):
      move(relative)
  for path in animation.step_pngs(os.path.join(workdir, SAMPLES_DIR)):
    if animation.grid_step(path) > step:
      move(os.path.join(SAMPLES_DIR, os.path.basename(path)))
  if step >= 0 and _scores_after(os.path.join(workdir, QUALITY_FILE), step):
    # Copied, then trimmed rather than moved: the resume keeps the scores up to its step
    # (DigitsQualityHook.keep_history reads them back).
    os.makedirs(aside, exist_ok=True)
    shutil.copy2(os.path.join(workdir, QUALITY_FILE), os.path.join(aside, QUALITY_FILE))
    trim_quality_json(workdir, step)
    moved.append(QUALITY_FILE)
  return moved


def set_aside_unreadable_records(workdir: str,
                                aside) -> list[tuple[str, str, str | None]]:
  """Moves a ``quality.json`` or ``best_fid.json`` that cannot be read (cut short, garbled,
  edited by hand) to ``aside`` as it is, with ``best_fid/`` for the latter.

  The run would otherwise go on without a word as if there were none: write a new
  ``quality.json`` over it (its history lost), and take the next FID for a new best, replacing
  the earlier best-FID checkpoint, however good it was. Set aside, both are kept.

  Args:
    workdir: The run's directory.
    aside: Where to (:func:`dcgan_jax.run_logs.new_aside_directory`).

  Returns:
    ``(file, why it cannot be read, what went with it)`` for each file set aside: its name
    (relative to the workdir), and ``best_fid/`` with ``best_fid.json`` (else None).
  """
  moved = []
  for name, usable in ((QUALITY_FILE, lambda saved: isinstance(saved, dict)),
                       (BEST_FID_FILE, lambda saved: isinstance(saved, dict)
                        and finite_number(saved.get('fid')) is not None)):
    path = os.path.join(workdir, name)
    if not os.path.lexists(path):
      continue
    try:
      with open(path, encoding='utf-8') as f:
        saved = json.load(f)
      reason = None if usable(saved) else 'not the record this version writes'
    except (OSError, ValueError) as e:  # (UnicodeDecodeError is a ValueError.)
      reason = f'{type(e).__name__}: {e}'
    if reason is None:
      continue
    run_logs.move_aside(workdir, name, aside)
    with_it = None
    if name == BEST_FID_FILE and os.path.lexists(os.path.join(workdir, BEST_FID_DIR)):
      run_logs.move_aside(workdir, BEST_FID_DIR, aside)
      with_it = f'{BEST_FID_DIR}/'
    moved.append((name, reason, with_it))
  return moved


def _scores_after(path: str, step: int) -> bool:
  """Whether the ``quality.json`` at ``path`` holds a score of a step after ``step``."""
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return False
  return max(_scored_steps(saved), default=-1) > step


def _scored_steps(saved: Any) -> list[int]:
  """The steps of the scores in a ``quality.json``'s contents: its current one and its
  history's (entries without a step left out)."""
  if not isinstance(saved, dict):
    return []
  history = saved.get('history') if isinstance(saved.get('history'), list) else []
  steps = [saved.get('step')] + [e.get('step') for e in history if isinstance(e, dict)]
  return [s for s in steps if is_integer(s)]


def describe_set_aside(moved: list[str]) -> str:
  """'best_fid.json, best_fid/ and 3 sample grids': what set_aside_earlier_outputs moved."""
  grids = sum(1 for m in moved if animation.grid_step(m) is not None)
  names = [m + ('/' if m == BEST_FID_DIR else '') for m in moved
           if animation.grid_step(m) is None]
  if grids:
    names.append(f'{grids} sample grid{"s" if grids > 1 else ""}')
  return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} and {names[-1]}'


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
  return {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v)
          for k, v in result.items()}


def write_sample_grid(workdir: str, step: int, images: np.ndarray, writer,
                      value_range: tuple[float, float], num_classes: int = 0) -> str:
  """Writes ``samples/step_XXXXXX.png`` and the same grid to TensorBoard; returns the path.

  A conditional generator's samples (classes cycled) get one column per class where that fits.
  """
  path = os.path.join(workdir, SAMPLES_DIR, f'step_{step:06d}.png')
  grid = sample_grid.save_grid(images, path, value_range=value_range,
                               num_columns=sample_grid.columns_for_classes(num_classes))
  writer.write_images(step, {'samples': grid[None]})
  return path
