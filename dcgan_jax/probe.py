r"""Linear probe of a trained discriminator: the DCGAN paper's representation test.

  python -m dcgan_jax.probe --workdir=/tmp/dcgan_digits [--step=N] \
      [--dataset=cifar10 [--dataset_path=...]] [--test_split=test] [--test_fraction=0.2] \
      [--max_train_examples=N] [--max_test_examples=N] [--l2=auto|0.01] [--grid=4] \
      [--nobaselines]

Radford et al. (2016, section 5.1) measure what a DCGAN's discriminator has learned by freezing
it and classifying labelled images with a linear L2-SVM on its features: every block's output
max-pooled to a 4×4 grid, flattened and concatenated. This program runs that protocol on a
checkpoint (see :mod:`dcgan_jax.evaluation.linear_probe` for the pieces):

1. D is restored from the newest (or ``--step``) checkpoint; BatchNorm uses its running
   statistics.
2. Labelled images are read at the run's image size and channels: the run's own dataset, or
   ``--dataset`` (the paper's transfer setting: a D trained on one dataset, probed on another).
   The probe trains on the run's split and tests on ``--test_split``; by default on the
   dataset's ``test`` split when it has one, else on ``--test_fraction`` of the run's split,
   held out with ``--seed``.
3. Features are standardised with the training images' statistics and a one-vs-rest L2-SVM is
   fitted by L-BFGS on the device. ``--l2=auto`` (default) picks the penalty among
   1e-4 … 1 on a fifth of the training features held out, then refits on all of them.
4. In the same run, with the same protocol, two anchors (``--nobaselines`` skips them): the
   same D at its random initialisation (what the architecture gives without training) and the
   raw pixels.

The accuracies are printed as a table and written, with the protocol, to
``<workdir>/probe_step_XXXXXX.json`` (``..._<dataset>.json`` with ``--dataset``). Mistakes (no
checkpoint, a dataset without labels, a bad split, ...) print one sentence on stderr and exit
with status 2.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import numpy as np

from dcgan_jax import cli_logging
from dcgan_jax import command_line
from dcgan_jax import json_files
from dcgan_jax import write_errors
from dcgan_jax.errors import UserError, exit_with_user_error



def _define_flags(flag_values):
  from absl import flags  # pylint: disable=g-import-not-at-top

  def define(kind, name, default, help_text, **kwargs):
    getattr(flags, f'DEFINE_{kind}')(name, default, help_text, flag_values=flag_values, **kwargs)

  define('string', 'workdir', None, "A training run's directory (its checkpoints are used).")
  define('integer', 'step', None, 'Checkpoint step to probe; default: the newest.')
  define('string', 'dataset', '', "Probe on this labelled dataset (digits, mnist, cifar10, "
         "folder, array, ...) instead of the run's, at the run's image size.")
  define('string', 'dataset_path', '', 'With --dataset=folder or array: its path.')
  define('string', 'test_split', '', "Split the probe is tested on; default: 'test' when the "
         'dataset has one, else --test_fraction of the training split.')
  define('float', 'test_fraction', 0.2, 'Part of the training split held out for testing when '
         'there is no test split.')
  define('integer', 'max_train_examples', 0, 'Train the probe on at most this many images '
         '(a seeded random subset); 0: all.')
  define('integer', 'max_test_examples', 0, 'Test on at most this many images; 0: all.')
  define('string', 'l2', 'auto', "The SVM's L2 penalty, or 'auto' to choose it among "
         '1e-4 ... 1 on held-out training features.')
  define('integer', 'grid', 4, 'Each feature map is max-pooled to grid x grid cells (the '
         'paper: 4).')
  define('integer', 'batch_size', 256, 'Images per discriminator call.')
  define('integer', 'seed', 0, 'Seed of the held-out choices, the subsets and the random-init '
         'baseline.')
  define('bool', 'baselines', True, 'Also probe the randomly initialised D and the raw pixels.')
  define('bool', 'library_logs', False, 'Also print the INFO logs of orbax, tensorflow-datasets '
         'and JAX start-up (hidden by default; warnings and errors always show).')


# ---- data -------------------------------------------------------------------------------------


def probe_config(run_config, dataset: str = '', dataset_path: str = ''):
  """The data config of the probe: the run's, or another ``dataset`` at the run's image size."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(run_config.to_dict())
  if dataset:
    config.dataset = dataset
    config.dataset_path = dataset_path
    config.split = 'train'
    config.crop_size = 0  # A crop tuned to the run's dataset (CelebA's faces) would not fit.
  elif dataset_path:
    raise UserError('--dataset_path needs --dataset (folder or array); the run\'s own dataset '
                    'path is read from its config.')
  return config


def _subset(images: np.ndarray, labels: np.ndarray, limit: int, seed: int):
  if not limit or len(images) <= limit:
    return images, labels
  # Random, not the first ones: a folder dataset is stored class after class.
  keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
  return images[keep], labels[keep]


def _available_splits(config) -> list[str]:
  from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import sources  # pylint: disable=g-import-not-at-top

  if input_pipeline._is_array(config):  # pylint: disable=protected-access
    return []
  return list(sources.resolve_source(config).builder.info.splits.keys())


def load_probe_data(config, *, test_split: str = '', test_fraction: float = 0.2,
                    max_train_examples: int = 0, max_test_examples: int = 0,
                    seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Labelled training and test images for the probe.

  Returns:
    ``{'train_images', 'train_labels', 'test_images', 'test_labels'}`` (uint8 images, int32
    labels) and the protocol that describes them.

  Raises:
    UserError: a dataset without labels, a bad split or fraction, too few images.
  """
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from dcgan_jax.evaluation import linear_probe  # pylint: disable=g-import-not-at-top

  if not 0 < test_fraction < 1:
    raise UserError(f'--test_fraction must be between 0 and 1, e.g. 0.2 (got {test_fraction}).')
  for name, value in (('max_train_examples', max_train_examples),
                      ('max_test_examples', max_test_examples)):
    if value < 0:
      raise UserError(f'--{name} must be 0 (all) or a positive count (got {value}).')
  info = input_pipeline.dataset_info(config)
  if not info.num_classes:
    raise UserError(f'Dataset {info.name!r} has no class labels, which a linear probe needs; '
                    'probe on a labelled dataset at the run\'s image size with --dataset '
                    '(digits, mnist, cifar10, a folder with one subfolder per class, ...).')
  train_split = info.split
  if not test_split:
    splits = _available_splits(config)
    if 'test' in splits and not train_split.startswith('test'):
      test_split = 'test'
  elif input_pipeline._is_array(config):  # pylint: disable=protected-access
    raise UserError("Dataset 'array' has no splits; leave --test_split empty to hold out "
                    '--test_fraction of its images.')
  images, labels = data.load_all_images(config, with_labels=True)
  if test_split:
    test_images, test_labels = data.load_all_images(config, split=test_split, with_labels=True)
    held_out = None
  else:
    if len(images) < 2:
      raise UserError(f'Dataset {info.name!r} has {len(images)} image(s); a probe needs at '
                      'least 2 to hold some out.')
    kept, held = linear_probe.holdout_indices(len(images), test_fraction, seed)
    images, labels, test_images, test_labels = (images[kept], labels[kept], images[held],
                                                labels[held])
    held_out = test_fraction
  images, labels = _subset(images, labels, max_train_examples, seed)
  test_images, test_labels = _subset(test_images, test_labels, max_test_examples, seed + 1)
  if len(np.unique(labels)) < 2:
    raise UserError(f'The probe\'s training images hold {len(np.unique(labels))} class; a '
                    'classifier needs at least 2 (use more examples).')
  arrays = {'train_images': images, 'train_labels': labels, 'test_images': test_images,
            'test_labels': test_labels}
  protocol = {
      'dataset': info.name, 'num_classes': int(info.num_classes),
      'train_split': train_split if test_split else f'{train_split} (the rest)',
      'test_split': test_split or f'{train_split} (held out {held_out:g}, seed {seed})',
      'num_train': int(len(images)), 'num_test': int(len(test_images)),
      'image_shape': list(info.image_shape),
  }
  return arrays, protocol


# ---- features and probe -----------------------------------------------------------------------


def extract(feature_fn, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Pooled features of ``images`` in fixed-size batches (one compilation), float32 ``[N, F]``."""
  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    count = len(batch)
    if count < batch_size:  # Running BN statistics: padding does not change the real rows.
      batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:],
                                              batch.dtype)])
    out.append(np.asarray(feature_fn(variables, batch))[:count])
  return np.concatenate(out)


def parse_l2(text: str) -> tuple[float, ...]:
  """``'auto'`` -> the default grid; a positive number -> that penalty alone."""
  from dcgan_jax.evaluation import linear_probe  # pylint: disable=g-import-not-at-top

  if str(text).strip().lower() == 'auto':
    return linear_probe.DEFAULT_L2_GRID
  try:
    value = float(text)
  except ValueError:
    value = float('nan')
  if not np.isfinite(value) or value <= 0:
    raise UserError(f"--l2 must be 'auto' or a positive penalty such as 0.01 (got {text!r}).")
  return (value,)


def probe_features(name: str, train_features: np.ndarray, train_labels: np.ndarray,
                   test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                   l2_grid: tuple[float, ...], seed: int) -> dict[str, Any]:
  """Fits the probe on one kind of feature; returns its row of the result."""
  from dcgan_jax.evaluation import linear_probe  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  classifier, validation = linear_probe.select_l2(train_features, train_labels, num_classes,
                                                  l2_grid, seed=seed)
  return {
      'features': name,
      'dim': int(train_features.shape[1]),
      'l2': classifier.l2,
      'validation_accuracy': {f'{l2:g}': acc for l2, acc in validation.items()},
      'train_accuracy': classifier.accuracy(train_features, train_labels),
      'test_accuracy': classifier.accuracy(test_features, test_labels),
      'lbfgs_iterations': classifier.iterations,
      'seconds': round(time.perf_counter() - start, 3),
  }


def result_path(workdir: str | os.PathLike, step: int, dataset: str = '') -> pathlib.Path:
  suffix = f'_{dataset}' if dataset else ''
  return pathlib.Path(workdir) / f'probe_step_{step:06d}{suffix}.json'


def probe(workdir: str, *, step: int | None = None, dataset: str = '', dataset_path: str = '',
          test_split: str = '', test_fraction: float = 0.2, max_train_examples: int = 0,
          max_test_examples: int = 0, l2: str = 'auto', grid: int = 4, batch_size: int = 256,
          seed: int = 0, baselines: bool = True) -> dict[str, Any]:
  """Runs the linear probe on a checkpoint (see the module docstring) and writes its JSON.

  Returns:
    ``{'step', 'rows': [...], 'protocol': {...}, 'path'}``; each row has ``features``,
    ``dim``, ``l2``, ``train_accuracy`` and ``test_accuracy``.

  Raises:
    UserError: see :func:`load_probe_data`, or no checkpoint, a bad ``l2``, ``grid`` or
      ``batch_size``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top
  from dcgan_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from dcgan_jax.evaluation import linear_probe  # pylint: disable=g-import-not-at-top

  l2_grid = parse_l2(l2)
  if grid not in (1, 2, 4):
    raise UserError(f'--grid must be 1, 2 or 4 (D\'s last map is 4x4; got {grid}).')
  if batch_size <= 0:
    raise UserError(f'--batch_size must be positive (got {batch_size}).')
  if not os.path.isdir(workdir):
    raise UserError(f'--workdir {workdir!r} does not exist; pass the directory of a training run.')
  run_config = evaluate.load_run_config(workdir)
  config = probe_config(run_config, dataset, dataset_path)
  arrays, protocol = load_probe_data(config, test_split=test_split, test_fraction=test_fraction,
                                     max_train_examples=max_train_examples,
                                     max_test_examples=max_test_examples, seed=seed)
  gan, restored_step = evaluate.load_state(workdir, run_config, step)
  discriminator = models.discriminator_from_config(run_config)
  feature_fn = linear_probe.feature_function(discriminator, grid,
                                             run_config.get('output_activation', 'tanh'))
  candidates = [(f'D, step {restored_step}', gan.discriminator.variables)]
  if baselines:
    example = jnp.zeros((1,) + tuple(protocol['image_shape']), jnp.float32)
    initial = discriminator.init(jax.random.key(seed), example, train=False,
                                 **state_lib.class_labels_kwargs(discriminator, 1))
    candidates.append((f'D, random init (seed {seed})', initial))
  num_classes = protocol['num_classes']
  rows = []
  for name, variables in candidates:
    train_features = extract(feature_fn, variables, arrays['train_images'], batch_size)
    test_features = extract(feature_fn, variables, arrays['test_images'], batch_size)
    rows.append(probe_features(name, train_features, arrays['train_labels'], test_features,
                               arrays['test_labels'], num_classes, l2_grid, seed))
  if baselines:
    rows.append(probe_features('pixels', linear_probe.pixel_features(arrays['train_images']),
                               arrays['train_labels'],
                               linear_probe.pixel_features(arrays['test_images']),
                               arrays['test_labels'], num_classes, l2_grid, seed))
  protocol.update({
      'classifier': 'one-vs-rest L2-SVM (squared hinge, L2 penalty) on standardised features, '
                    'L-BFGS',
      'l2': 'auto' if len(l2_grid) > 1 else l2_grid[0],
      'l2_grid': list(l2_grid), 'validation_fraction': 0.2, 'grid': grid, 'seed': seed,
      'batch_norm': 'running statistics', 'device': jax.devices()[0].device_kind,
  })
  result = {'step': restored_step, 'rows': rows, 'protocol': protocol}
  path = result_path(workdir, restored_step, dataset)
  try:
    json_files.write_json_atomically(path, result)
  except OSError as e:  # A full disk: the line still gives what the probe measured.
    accuracies = ', '.join(f"{row['features']} {row['test_accuracy']:.4f}" for row in rows)
    error = write_errors.unsaved_result(
        path, e, f'The test accuracies, which are not saved: {accuracies}.')
    if error is None:
      raise
    raise error from e
  result['path'] = str(path)
  return result


def format_result(result: dict[str, Any]) -> str:
  """The protocol in two lines, then one table row per kind of feature."""
  p = result['protocol']
  header = ('features', 'dim', 'l2', 'train acc', 'test acc')
  body = [(row['features'], f"{row['dim']:,}", f"{row['l2']:g}", f"{row['train_accuracy']:.4f}",
           f"{row['test_accuracy']:.4f}") for row in result['rows']]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

  def fmt(line):
    return '  '.join([f'{line[0]:<{widths[0]}}'] +
                     [f'{cell:>{width}}' for cell, width in zip(line[1:], widths[1:])])

  return '\n'.join([
      f"Linear probe (L2-SVM) of the discriminator's features, {p['grid']}x{p['grid']} max-pooled "
      f"per block: {p['dataset']}, {p['num_classes']} classes.",
      f"Train: {p['train_split']}, {p['num_train']} images; test: {p['test_split']}, "
      f"{p['num_test']} images; l2 {p['l2']}.",
      fmt(header), fmt(['-' * w for w in widths])] + [fmt(line) for line in body] + [
      f"Written to {result['path']}"])


def main(argv: list[str] | None = None) -> None:
  """Command line (see the module docstring); mistakes exit 2 with one line on stderr."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  _define_flags(flag_values)
  f = command_line.parse_workdir_flags(flag_values, argv, usage=__doc__)
  cli_logging.quiet_library_logs(not f.library_logs)
  cli_logging.no_progress_bars_off_a_terminal()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    result = probe(f.workdir, step=f.step, dataset=f.dataset, dataset_path=f.dataset_path,
                   test_split=f.test_split, test_fraction=f.test_fraction,
                   max_train_examples=f.max_train_examples,
                   max_test_examples=f.max_test_examples, l2=f.l2, grid=f.grid,
                   batch_size=f.batch_size, seed=f.seed, baselines=f.baselines)
  except UserError as e:
    exit_with_user_error(str(e))
  except KeyboardInterrupt:
    command_line.exit_interrupted('No result was written.')
  print(format_result(result))


if __name__ == '__main__':
  main()
