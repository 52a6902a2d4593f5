r"""Scores a trained generator: FID, Inception Score, KID, precision/recall, density/coverage.

  python -m dcgan_jax.evaluate --workdir=/tmp/dcgan_celeba \
      --inception_weights=pt_inception-2015-12-05-6726825d.pth [--num_samples=50000] \
      [--reference=stats.npz] [--step=N] [--batch_size=200] [--preprocessing=pytorch_fid|tf] \
      [--no_ema]

The run's config is read from the workdir, the generator of the latest (or `--step`) checkpoint
is restored (its EMA weights when the run kept them, unless --no_ema), `--num_samples` images
are generated from seeded latents and scored:

* FID against `--reference` (a `mu`/`sigma` .npz, e.g. pytorch-fid's `--save-stats` output), or
  else against the run's own dataset, whose statistics are computed once and cached as
  ``<workdir>/fid_reference_<dataset>_<size>_<preprocessing>.npz`` (with a subset of the
  reference features, for KID);
* the Inception Score (10 splits; fewer, of 2 images at least, for under 20 images);
* KID, and precision/recall with density/coverage (k = 3), against the reference features:
  the cached ones, or those of a `--reference` file that holds them (``python -m dcgan_jax.fid
  PATH --save_stats=F --precision_recall`` writes them). Against a file of statistics only
  (pytorch-fid's) they are skipped with a note: they need features, not moments.

A class-conditional run draws its classes in turn. With ``--label=K`` it draws class K only and
the dataset reference holds the real images of class K alone (cached as
``..._class<K>.npz``): FID within one class, whose mean over the classes is the intra-FID of
conditional GAN papers (e.g. Miyato & Koyama 2018). ``--intra_fid`` computes that mean in one
run: every class in turn, ``--num_samples`` generated images per class, one Inception network
and one read of the dataset for all of them; it prints each class's FID and writes
``eval_step_XXXXXX_intra.json`` beside the per-class files.

The numbers are printed with their protocol (samples, reference, preprocessing) and written to
``<workdir>/eval_step_XXXXXX.json`` (``eval_step_XXXXXX_class<K>.json`` with ``--label``).
A file there that holds a result under another protocol (other weights, reference, sample count,
``--no_ema``, ...) is kept: the new result goes to ``eval_step_XXXXXX-2.json`` (then ``-3``, ...)
and a warning names the settings that differ. The generated images depend on ``--seed`` alone
(image j's latent is drawn from the seed and j), not on ``--batch_size`` or the device count.
Each batch is generated split over the local devices (each draws its own rows' latents) and
reaches Inception, which splits its batches over the same devices, where it was made.
Mistakes (missing workdir, checkpoint, weights, a bad reference file, ...) print one sentence on
stderr and exit with status 2.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pathlib
import zipfile
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging
import numpy as np

from dcgan_jax import class_names
from dcgan_jax import cli_logging
from dcgan_jax import command_line
from dcgan_jax import json_files
from dcgan_jax import write_errors
from dcgan_jax.errors import UserError, exit_with_user_error

# A private flag set, so that this module and dcgan_jax.main (which also defines --workdir) can
# be imported into one process (tests, notebooks).
FLAGS = flags.FlagValues()

flags.DEFINE_string('workdir', None, "The training run's directory.", flag_values=FLAGS)
flags.DEFINE_string('inception_weights', None, 'pt_inception-2015-12-05-6726825d.pth or an .npz '
                    'copy; empty means the cached download (python -m '
                    'dcgan_jax.evaluation.download_weights).', flag_values=FLAGS)
flags.DEFINE_integer('num_samples', 50_000, 'Generated images to score (50,000 is the standard; '
                     'FID is comparable only at equal counts). Inception-v3 at 299x299 takes '
                     'seconds for 50,000 on a GPU but hours on a CPU: there, e.g. '
                     '--num_samples=2000 --num_reference=2000 gives a quick look.',
                     flag_values=FLAGS)
flags.DEFINE_string('reference', '', 'A mu/sigma .npz of reference statistics; empty means the '
                    "run's dataset (computed once, cached in the workdir).", flag_values=FLAGS)
flags.DEFINE_integer('num_reference', 50_000, 'Dataset images used for the cached reference '
                     '(all of them when the split is smaller).', flag_values=FLAGS)
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate; default the latest.',
                     flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 200, 'Images per generator / Inception batch, over all '
                     'local devices (rounded up to a multiple of their count; the images are '
                     'the same at any batch size).', flag_values=FLAGS)
flags.DEFINE_enum('preprocessing', 'pytorch_fid', ['pytorch_fid', 'tf'], 'Inception input '
                  'preprocessing: pytorch_fid (default) or tf (TTUR, torch-fidelity).',
                  flag_values=FLAGS)
flags.DEFINE_enum('precision', 'default', ['default', 'high', 'highest'], 'Matmul/conv '
                  'precision of the Inception network.', flag_values=FLAGS)
flags.DEFINE_bool('no_ema', False, "Use the trained weights even when the checkpoint holds EMA "
                  'ones (the default uses the EMA weights when present).', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the generated latents.', flag_values=FLAGS)
flags.DEFINE_string('label', '', 'Class-conditional runs: score this class alone (by number, '
                    "or by name from the run's classes.json), against the dataset's images of "
                    'that class (default: every class in turn, against the whole dataset).',
                    flag_values=FLAGS)
flags.DEFINE_bool('intra_fid', False, 'Class-conditional runs: score every class against the '
                  "dataset's images of that class and report the mean FID (intra-FID); "
                  '--num_samples is then per class.', flag_values=FLAGS)
flags.DEFINE_bool('library_logs', False, 'Also print the INFO logs of orbax, tensorflow-datasets '
                  'and JAX start-up (hidden by default; warnings and errors always show).',
                  flag_values=FLAGS)

REFERENCE_PREFIX = 'fid_reference'
# Reference features kept for KID (KID draws subsets of at most 1000 from each side).
MAX_KID_FEATURES = 10_000
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
IS_SPLITS = 10
# Per-image reference features in .npz statistics files (the dataset cache, fid --save_stats).
FEATURES_KEY = 'kid_features'
# The metadata key of the Inception network's fingerprint (extractor.weights_fingerprint) in
# statistics files: the dataset caches and `fid --save_stats` record it.
WEIGHTS_KEY = 'inception_weights'
# And what the network computed in (extractor.arithmetic: 'float32', or e.g. 'precision default
# on gpu', TF32): statistics from another arithmetic differ beyond rounding.
ARITHMETIC_KEY = 'inception_arithmetic'


_fail = exit_with_user_error


# ---- restoring the generator ------------------------------------------------------------------


def load_run_config(workdir: str | os.PathLike):
  """The run's config as an ``ml_collections.ConfigDict`` (raises UserError without one)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(checkpointing.restore_config(workdir))


def load_state(workdir: str, config, step: int | None):
  """Restores the whole GAN state (G, D, EMA) of a checkpoint of the run in `workdir`.

  Returns:
    (:class:`dcgan_jax.state.GANState` on the first local device, its step).

  Raises:
    UserError: no checkpoint (of that step), or none restorable with the run's config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top

  # The restore target: the shapes of a fresh state (schedules do not change its structure),
  # traced with eval_shape so that nothing is initialised or compiled.
  num_steps = max(1, int(config.get('num_train_steps', 1)))
  device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
  abstract = jax.eval_shape(
      lambda: {'gan': train.create_train_state(config, jax.random.key(0), num_steps),
               'train_key': jax.random.key_data(jax.random.key(0))})
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract)
  with checkpointing.Checkpointer(workdir, read_only=True) as checkpointer:
    restored, _, restored_step = checkpointer.restore(target, step=step)
  return restored['gan'], int(restored_step)


def load_generator(workdir: str, config, step: int | None, use_ema: bool):
  """Restores G's sampling variables from a checkpoint of the run in `workdir`.

  Returns:
    (generator module, variables {'params', 'batch_stats'}, step, whether EMA weights are used).

  Raises:
    UserError: no checkpoint (of that step), or none restorable with the run's config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top

  state, restored_step = load_state(workdir, config, step)
  used_ema = use_ema and state.ema is not None
  variables = state.sampling_variables(use_ema=used_ema)
  # NaN images would quantise to black and score an ordinary-looking FID: refuse them here.
  if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(variables)):
    raise UserError(f"The generator's {'EMA ' if used_ema else ''}weights at step "
                    f'{restored_step} in {workdir} are not finite (NaN or infinite); evaluate '
                    'an earlier step (--step).')
  return models.generator_from_config(config), variables, restored_step, used_ema


def generate(generator, variables, num_samples: int, latent_dim: int, batch_size: int,
             seed: int, value_range: tuple[float, float] | None = None,
             label: int | None = None, devices: Sequence[Any] | None = None):
  """Yields batches of generated images, `num_samples` in all, as device arrays.

  Image j of the whole sample has the latent ``normal(fold_in(key(seed), j))``, so the samples
  (and the scores) depend on the seed alone, not on the batch size or the device count. A
  class-conditional generator (``num_classes > 0``) draws the classes in turn (image j of the
  whole sample shows class ``j mod num_classes``), so every class is scored equally often; with
  ``label`` every image shows that class.

  Generation is data-parallel over ``devices``, on the mesh of
  :class:`dcgan_jax.generation.LocalGenerator`: G's variables are replicated there and each
  device draws the latents of its own rows of the batch and runs G on them (``shard_map``; in
  eval mode G makes every image on its own, so the images are those one device would make). Each batch is split over the
  devices as :class:`dcgan_jax.evaluation.InceptionExtractor` over the same devices splits its
  batches of the same size, so Inception takes it as it is. Sampling (and quantisation) is one
  jitted program per batch, compiled once per generator, batch shape and devices; nothing waits
  for the device, so the caller can queue the scoring of each batch behind it.

  Args:
    generator, variables: the flax generator and its sampling variables (on any device or the
      host; replicated over ``devices`` once per call).
    num_samples: images in all (the last batch may be smaller).
    latent_dim: the generator's latent size.
    batch_size: images per batch, rounded up to a multiple of the device count (as the
      extractor rounds its batches).
    seed: seed of the latents.
    value_range: None yields ``float32 [b, H, W, C]`` in the generator's range; ``(low, high)``
      yields them quantised on the device, ``uint8 [b, H, W, C]`` (`evaluation.to_uint8_jax`).
    label: a conditional generator's one class for every image; None cycles the classes.
    devices: the devices to generate on; default ``jax.local_devices()`` (the extractor's
      default).

  Yields:
    Batches ``[b, H, W, C]`` in order, split over ``devices`` along the rows; a last, smaller
    batch is the first rows of a whole one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dcgan_jax import generation  # pylint: disable=g-import-not-at-top

  local = generation.LocalGenerator(generator, devices)
  batch_size = -(-batch_size // local.num_devices) * local.num_devices
  mesh = local.batch_sharding.mesh
  try:  # One compiled sampler per generator and shape, whatever the seed or label (intra-FID).
    sample = _sampler(generator, latent_dim, batch_size, value_range, label is not None, mesh)
  except TypeError:  # An unhashable (custom) generator: compiled for this call alone.
    sample = _sampler.__wrapped__(generator, latent_dim, batch_size, value_range,
                                  label is not None, mesh)
  variables = local.replicate(variables)
  base = jax.random.key(seed)
  label_value = np.int32(0 if label is None else label)
  for start in range(0, num_samples, batch_size):
    images = sample(variables, base, np.int32(start), label_value)
    yield images if num_samples - start >= batch_size else images[:num_samples - start]


@functools.lru_cache(maxsize=16)
def _sampler(generator, latent_dim: int, batch_size: int,
             value_range: tuple[float, float] | None, one_label: bool, mesh):
  """The jitted ``(variables, key, start, label) -> images`` of :func:`generate` over ``mesh``
  (a 1-D mesh; ``batch_size`` a multiple of its size): images split along the rows."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top

  num_classes = getattr(generator, 'num_classes', 0)
  (axis,) = mesh.axis_names
  rows = batch_size // mesh.size

  def sample(variables, key, start, label):
    # This device's rows of the batch: the latents are drawn where they are used.
    index = start + jax.lax.axis_index(axis) * rows + jax.numpy.arange(rows)
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (latent_dim,)))(index)
    labels = None
    if num_classes:
      labels = index % num_classes
      if one_label:
        labels = jax.numpy.full((rows,), label)
    images = generator.apply(variables, z, train=False, **models.label_kwargs(labels))
    return images if value_range is None else evaluation.to_uint8_jax(images, *value_range)

  # check_vma=False: G's transposed convolutions are written as jax.linear_transpose, which
  # refuses rows typed as varying over the mesh (and G runs no collective here).
  return jax.jit(jax.shard_map(sample, mesh=mesh, in_specs=(P(), P(), P(), P()),
                               out_specs=P(axis), check_vma=False))


def _first_rows(x, count: int):
  """``x[:count]``, without a slicing program (compiled per count) when all rows are kept."""
  return x if x.shape[0] <= count else x[:count]


# ---- reference statistics ----------------------------------------------------------------------


def reference_cache_path(workdir: str | os.PathLike, config, preprocessing: str,
                         label: int | None = None) -> pathlib.Path:
  """``<workdir>/fid_reference_<dataset>_<size>_<preprocessing>[_class<label>].npz``."""
  name = f'{REFERENCE_PREFIX}_{config.dataset}_{int(config.image_size)}_{preprocessing}'
  if label is not None:
    name += f'_class{label}'
  return pathlib.Path(workdir) / f'{name}.npz'


def _absolute(path: str) -> str:
  return os.path.abspath(path) if path else ''


def dataset_reference(workdir: str, config, extractor, num_reference: int,
                      label: int | None = None,
                      load_labelled: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
                      ) -> tuple[Any, np.ndarray, dict[str, Any]]:
  """Statistics (and KID features) of the run's dataset, from the cache or computed and cached.

  With ``label``, of the dataset's images of that class only (the first ``num_reference``);
  ``load_labelled`` then gives the dataset's ``(images, labels)`` when the cache misses (a
  memoised loader lets the classes of :func:`intra_fid` share one read), by default
  ``data.load_all_images(config, with_labels=True)``.

  Returns:
    (FeatureStatistics, features [<= MAX_KID_FEATURES, 2048] float32, protocol dict).
  """
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top

  path = reference_cache_path(workdir, config, extractor.preprocessing, label)
  # Everything that changes the statistics: a cache made with other settings is recomputed.
  description = {'dataset': str(config.dataset), 'split': str(config.get('split', 'train')),
                 'image_size': int(config.image_size), 'channels': int(config.channels),
                 'preprocessing': extractor.preprocessing, 'requested': int(num_reference),
                 'dataset_path': _absolute(config.get('dataset_path', '')),
                 'crop_size': int(config.get('crop_size', 0)),
                 'data_dir': str(config.get('data_dir', '')),
                 'precision': str(getattr(extractor, 'precision', '')),
                 WEIGHTS_KEY: str(getattr(extractor, 'weights_fingerprint', '')),
                 ARITHMETIC_KEY: str(getattr(extractor, 'arithmetic', ''))}
  if label is not None:  # (Caches of the whole dataset keep the keys they always had.)
    description['label'] = int(label)
  if description['dataset_path']:
    # The files there now: images replaced under the same path make another reference.
    description['source_fingerprint'] = image_files.source_fingerprint(
        description['dataset_path'])
  if path.is_file():
    try:
      stats, metadata = evaluation.FeatureStatistics.load(path)
      cached = {key: metadata.get(key) for key in description}
      if cached == description and FEATURES_KEY in metadata:
        logging.info('Using the cached reference statistics %s.', path)
        protocol = {'source': str(path), 'cached': True, 'num_samples': int(stats.count),
                    **description}
        return stats, np.asarray(metadata[FEATURES_KEY], np.float32), protocol
      logging.info('The cached reference %s was made with other settings; recomputing it.', path)
    except UserError as e:
      logging.warning('Ignoring the unreadable cached reference %s (%s).', path, e)
  if label is None:
    images = data.load_all_images(config, max_examples=num_reference)
  else:
    images, labels = (load_labelled() if load_labelled is not None
                      else data.load_all_images(config, with_labels=True))
    images = images[labels == label][:num_reference]
    if len(images) < 2:
      raise UserError(f'The dataset has {len(images)} images of class {label}; FID needs at '
                      'least 2.')
  stats = evaluation.FeatureStatistics()
  kid_features = []
  kept = 0
  for out in extractor.device_batches(images):  # Statistics accumulate on the device.
    stats.update(out['pool'])
    if kept < MAX_KID_FEATURES:
      kid_features.append(_first_rows(out['pool'], MAX_KID_FEATURES - kept))
      kept += kid_features[-1].shape[0]
  features = (np.concatenate([np.asarray(x) for x in kid_features]) if kid_features
              else np.zeros((0, 2048), np.float32))
  try:
    stats.save(path, **description, **{FEATURES_KEY: features})  # Whole files only.
    logging.info('Cached the reference statistics of %d images in %s.', stats.count, path)
  except OSError as e:  # A full disk: the cache only saves time, the evaluation goes on.
    if write_errors.storage_failure(e) is None:
      raise
    logging.warning('Could not cache the reference statistics in %s (%s); the next evaluation '
                    'computes them again.', path, e.strerror)
  protocol = {'source': str(path), 'cached': False, 'num_samples': int(stats.count),
              **description}
  return stats, features, protocol


def file_reference(path: str, preprocessing: str) -> tuple[Any, dict[str, Any]]:
  """Statistics from a `mu`/`sigma` file; raises UserError when it is not one of 2048 dims.

  The protocol dict carries the file's per-image features under ``'features'`` (``[n, 2048]``
  float32) when it holds them (``python -m dcgan_jax.fid PATH --save_stats=F
  --precision_recall`` writes them), else None.
  """
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

  make_stats = (f'make statistics with `python -m dcgan_jax.fid {path} --save_stats=stats.npz '
                '--precision_recall` and pass that file')
  if os.path.isdir(path) or (os.path.isfile(path) and not path.lower().endswith('.npz')
                             and zipfile.is_zipfile(path)):  # (An .npz is a zip too.)
    raise UserError(f'The reference {path} is a {"folder" if os.path.isdir(path) else "zip"} of '
                    f'images, not a statistics file; {make_stats}.')
  if not os.path.isfile(path):
    raise UserError(f'The reference statistics file {path} does not exist; pass a mu/sigma .npz '
                    '(e.g. from pytorch-fid --save-stats) or omit --reference.')
  stats, metadata = evaluation.FeatureStatistics.load(path)
  if stats.dim != 2048:
    raise UserError(f'{path} holds {stats.dim}-dim statistics; FID needs the 2048-dim Inception '
                    'pool_3 statistics.')
  file_mode = metadata.get('preprocessing')
  if file_mode is None:
    # pytorch-fid's and TTUR's files record nothing; scored under the other mode, a review's
    # FID came out 15% off with no word.
    logging.warning('%s does not record the preprocessing its statistics were computed with; '
                    'it is taken to be --preprocessing=%s. Files from pytorch-fid '
                    '(--save-stats) were made with pytorch_fid, TTUR\'s fid_stats_*.npz with tf; '
                    'FIDs across the two are not comparable.', path, preprocessing)
  elif str(file_mode) != preprocessing:
    # The two modes resize differently: FIDs across them differ by more than many model gaps.
    raise UserError(f'{path} was computed with preprocessing={file_mode}, but '
                    f'--preprocessing is {preprocessing}, and FIDs under different '
                    f'preprocessing are not comparable; pass --preprocessing={file_mode}, or '
                    f'recompute the statistics with --preprocessing={preprocessing}.')
  features = metadata.get(FEATURES_KEY)
  if features is not None:
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != 2048:
      raise UserError(f'{path} holds {FEATURES_KEY} of shape {features.shape}; they must be '
                      '[n, 2048] Inception pool_3 features.')
  weights = metadata.get(WEIGHTS_KEY)
  arithmetic = metadata.get(ARITHMETIC_KEY)
  return stats, {'source': os.path.abspath(path), 'num_samples': int(stats.count) or None,
                 'preprocessing': None if file_mode is None else str(file_mode),
                 'features': features,
                 'inception_weights': str(weights) if weights is not None else None,
                 'inception_arithmetic': str(arithmetic) if arithmetic else None}


def check_same_weights(path: str, recorded: str | None, fingerprint: str | None,
                       other: str = "this evaluation's --inception_weights") -> None:
  """Refuses statistics made by another Inception network than ``fingerprint``'s.

  FIDs from two networks are not comparable (two random-weight networks gave 1,279 and 265,307
  for the same folders), and nothing else in the numbers shows the mix-up. Files without the
  record (pytorch-fid's, or ours before it was kept) pass.
  """
  if recorded and fingerprint and recorded != fingerprint:
    raise UserError(f'{path} was computed with other Inception weights (fingerprint {recorded}) '
                    f'than {other} ({fingerprint}); FIDs from different networks are not '
                    'comparable: pass the weights that made it, or make the statistics again.')


def warn_about_other_arithmetic(path: str, recorded: str | None, arithmetic: str | None,
                                other: str = 'this evaluation') -> bool:
  """Warns when statistics were made in another arithmetic than ``arithmetic`` (see
  :func:`dcgan_jax.evaluation.extractor.arithmetic`); returns whether it warned.

  A warning, not a refusal: TF32 against float32 features moves an FID far less than other
  weights or preprocessing do, but it moves it, and nothing in the numbers shows it. Files
  without the record (pytorch-fid's, ours before it was kept) pass.
  """
  if not recorded or not arithmetic or recorded == arithmetic:
    return False
  logging.warning('%s was computed with Inception in %s, %s runs it in %s: the FID mixes the '
                  'two and differs slightly from one computed in either alone; pass the same '
                  '--precision on the same kind of device (--precision=highest is float32 '
                  'everywhere), or make the statistics again.', path, recorded, other, arithmetic)
  return True


# ---- the evaluation ---------------------------------------------------------------------------


def evaluate(workdir: str, inception_weights: str | None, *, num_samples: int = 50_000,
             reference: str = '', num_reference: int = 50_000, step: int | None = None,
             batch_size: int = 200, preprocessing: str = 'pytorch_fid',
             precision: str = 'default', use_ema: bool = True, seed: int = 0,
             label: int | None = None) -> dict[str, Any]:
  """Generates `num_samples` images from a run's checkpoint and scores them.

  With ``label`` (class-conditional runs) every image shows that class and the dataset
  reference holds that class's images alone.

  Returns:
    The result written to ``<workdir>/eval_step_XXXXXX.json``: step, fid, inception_score,
    inception_score_std, kid, kid_std, precision, recall, density, coverage (None when
    skipped: they need the reference's features; kid_std also when one round of KID is all
    there is) and protocol.

  Raises:
    UserError: any mistake in the arguments or files (one sentence).
  """
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top

  _check_counts(num_samples, batch_size, num_reference)
  workdir = os.fspath(pathlib.Path(workdir).expanduser().absolute())
  # Cheap checks first: the run, its checkpoint, the reference file, then the weights.
  config = load_run_config(workdir)
  models.check_label(label, int(config.get('num_classes', 0) or 0))
  file_ref = None
  if reference:
    ref_stats, ref_protocol = file_reference(reference, preprocessing)
    ref_weights = ref_protocol.pop('inception_weights')
    ref_arithmetic = ref_protocol.pop('inception_arithmetic')
    # A file with per-image features (fid --save_stats --precision_recall) allows KID and
    # precision/recall too; the protocol records how many, not the features.
    ref_features = ref_protocol.pop('features')
    if ref_features is not None:
      ref_protocol['num_features'] = int(ref_features.shape[0])
    file_ref = (ref_stats, ref_features, ref_protocol)
  extractor = evaluation.InceptionExtractor.from_file(
      inception_weights, preprocessing=preprocessing, precision=precision, batch_size=batch_size)
  if reference:
    check_same_weights(reference, ref_weights, getattr(extractor, 'weights_fingerprint', None))
    warn_about_other_arithmetic(reference, ref_arithmetic, getattr(extractor, 'arithmetic', None))
  loaded = load_generator(workdir, config, step, use_ema)
  return _score(workdir, config, extractor, loaded, num_samples=num_samples, seed=seed,
                batch_size=batch_size, label=label, file_ref=file_ref,
                num_reference=num_reference, inception_weights=inception_weights)


def _check_counts(num_samples: int, batch_size: int, num_reference: int = 2) -> None:
  if num_samples < 2:
    raise UserError(f'--num_samples must be at least 2 (got {num_samples}); 50000 is standard.')
  if num_reference < 2:  # A negative count would slice the dataset from its end.
    raise UserError(f'--num_reference must be at least 2 (got {num_reference}); 50000 is '
                    'standard (the whole dataset when it is smaller).')
  if batch_size < 1:
    raise UserError(f'--batch_size must be positive (got {batch_size}).')


def _score(workdir: str, config, extractor, loaded, *, num_samples: int, seed: int,
           batch_size: int, label: int | None, file_ref, num_reference: int,
           inception_weights: str | None,
           load_labelled: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
           ) -> dict[str, Any]:
  """Generates and scores the images of one evaluation (see :func:`evaluate`); writes its JSON.

  Args:
    loaded: ``(generator, variables, step, used_ema)`` from :func:`load_generator`.
    file_ref: ``(stats, features or None, protocol)`` of a ``--reference`` file, or None for
      the run's dataset (of class ``label``).
  """
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

  generator, variables, step, used_ema = loaded
  if file_ref is None:
    ref_stats, ref_features, ref_protocol = dataset_reference(
        workdir, config, extractor, num_reference, label, load_labelled)
  else:
    ref_stats, ref_features, ref_protocol = file_ref

  from dcgan_jax import models  # pylint: disable=g-import-not-at-top
  value_range = models.output_range(config.output_activation)
  fake = evaluation.FeatureStatistics()
  logits, kid_features = [], []
  kept = 0
  # Images, features and statistics stay on the devices and nothing waits for them inside the
  # loop: the logits (for IS) and the first KID features are gathered on the devices and copied
  # to the host once, after the last batch. Generated on the extractor's devices in its batch
  # size, each batch reaches Inception split over them as it takes its batches.
  for images in generate(generator, variables, num_samples, int(config.latent_dim), batch_size,
                         seed, value_range=value_range, label=label,
                         devices=getattr(extractor, 'devices', None)):
    for out in extractor.device_batches(images):
      fake.update(out['pool'])
      logits.append(out['logits'])
      if ref_features is not None and kept < MAX_KID_FEATURES:
        kid_features.append(_first_rows(out['pool'], MAX_KID_FEATURES - kept))
        kept += kid_features[-1].shape[0]
  logits = np.concatenate([np.asarray(x) for x in logits])
  # The generated features that KID and precision/recall share (only with reference features).
  fake_features = (np.concatenate([np.asarray(x) for x in kid_features])
                   if ref_features is not None else None)

  fid = evaluation.frechet_distance(fake, ref_stats)
  # Two images per split at least: a split of one image has an IS of exactly 1, whatever G does.
  splits = min(IS_SPLITS, max(1, num_samples // 2))
  is_mean, is_std = evaluation.inception_score(logits, splits=splits)
  kid_mean = kid_std = None
  kid_protocol: dict[str, Any] = {'skipped': 'a --reference file holds statistics only; KID '
                                             'needs reference features (omit --reference, or '
                                             'make the file with fid --save_stats '
                                             '--precision_recall)'}
  if ref_features is not None:
    subset = min(KID_SUBSET_SIZE, fake_features.shape[0], ref_features.shape[0])
    # Subsets as large as both sets are all the same one: one round says it all (100 gave a
    # "± 0" that read as a measured spread).
    subsets = 1 if subset == fake_features.shape[0] == ref_features.shape[0] else KID_SUBSETS
    if subset >= 2:
      kid_mean, kid_std = evaluation.kernel_inception_distance(
          fake_features, ref_features, num_subsets=subsets, subset_size=subset)
      if subsets == 1:
        kid_std = None  # One round has no spread: a stored 0.0 read as a measured one.
      kid_protocol = {'subsets': subsets, 'subset_size': subset,
                      'num_generated_features': int(fake_features.shape[0]),
                      'num_reference_features': int(ref_features.shape[0])}
    else:
      kid_protocol = {'skipped': 'fewer than 2 reference features'}
  manifold_scores = dict.fromkeys(evaluation.manifold.METRICS)
  manifold_protocol: dict[str, Any] = {
      'skipped': 'a --reference file holds statistics only; precision and recall need '
                 'reference features (omit --reference, or make the file with fid '
                 '--save_stats --precision_recall)'}
  if ref_features is not None:
    smaller = min(fake_features.shape[0], ref_features.shape[0])
    k = evaluation.manifold.DEFAULT_K
    if smaller > k:
      manifold_scores = evaluation.manifold.manifold_metrics(ref_features, fake_features, k=k)
      manifold_protocol = {'k': k, 'features': 'inception pool_3', 'inside': MANIFOLD_INSIDE,
                           'num_generated_features': int(fake_features.shape[0]),
                           'num_reference_features': int(ref_features.shape[0])}
    else:
      manifold_protocol = {'skipped': f'{smaller} features on one side; k-nearest-neighbour '
                                      f'balls need more than k={k}'}

  result = {
      'step': step, 'fid': fid, 'inception_score': is_mean, 'inception_score_std': is_std,
      'kid': kid_mean, 'kid_std': kid_std, **manifold_scores,
      'protocol': {
          'num_samples': int(num_samples), 'seed': int(seed), 'latents': LATENTS,
          'used_ema': bool(used_ema),
          'num_classes': int(config.get('num_classes', 0) or 0), 'label': label,
          'preprocessing': extractor.preprocessing, 'precision': extractor.precision,
          'inception_weights': os.path.abspath(inception_weights) if inception_weights else None,
          FINGERPRINT_KEY: _fingerprint(extractor),
          'reference': ref_protocol, 'inception_score_splits': splits, 'kid': kid_protocol,
          'precision_recall': manifold_protocol,
          'dataset': str(config.dataset), 'image_size': int(config.image_size)},
  }
  suffix = '' if label is None else f'_class{label}'
  path = _write_result(
      result_path(workdir, f'eval_step_{step:06d}{suffix}', result['protocol']), result)
  result['path'] = str(path)
  return result


# The numbers a result file holds, in the order a failed write of it gives them.
_SCORES = ('intra_fid', 'fid', 'inception_score', 'kid', 'precision', 'recall', 'density',
           'coverage')


def _write_result(path: pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
  """Writes a result's JSON. A write the storage refuses (a full disk) is one line that still
  gives the scores: on a CPU they took hours."""
  try:
    return json_files.write_json_atomically(path, result)
  except OSError as e:
    scores = ', '.join(f'{name} {result[name]:.6g}' for name in _SCORES
                       if isinstance(result.get(name), (int, float)))
    error = write_errors.unsaved_result(
        path, e, f"The scores of step {result['step']}, which are not saved: {scores}.")
    if error is None:
      raise
    raise error from e


# How a point counts as inside a k-NN ball, in each result's protocol: results from before
# 2026-12-07 counted <= for all four (density 4/3 for a set against itself).
MANIFOLD_INSIDE = '<= radius for precision, recall; < for density, coverage (as prdc)'

# How the generated images' latents are drawn, in each result's protocol. Until 80dde0a
# (2026-12-06) batch i drew normal(fold_in(key(seed), i)) for a whole batch, so the images
# depended on --batch_size; results from then lack this field, and a new one at the same seed
# is kept beside them with "differing: latents" (same flags, other images: another FID).
LATENTS = 'image j: normal(fold_in(key(seed), j))'


# The protocol's record of which Inception network scored a result (its weights' digest, as
# statistics files and reference caches record it): the file's path alone proved nothing.
FINGERPRINT_KEY = 'inception_weights_fingerprint'


def _fingerprint(extractor) -> str | None:
  fingerprint = getattr(extractor, 'weights_fingerprint', None)
  return str(fingerprint) if fingerprint else None


def _comparable(protocol: Any, weights_path: bool = False) -> Any:
  """A protocol without what differs between two runs of the same evaluation: whether the
  reference came from the cache, and where the weights file lay when their digest is recorded
  (unless ``weights_path``: to name what differs). A field at None counts as absent (fields
  added since an older result)."""
  if not isinstance(protocol, dict):
    return protocol
  protocol = {k: v for k, v in protocol.items() if v is not None}
  if protocol.get(FINGERPRINT_KEY) and not weights_path:
    protocol.pop('inception_weights', None)
  reference = protocol.get('reference')
  if isinstance(reference, dict):
    protocol = {**protocol, 'reference': {k: v for k, v in reference.items() if k != 'cached'}}
  return json.loads(json.dumps(protocol))  # Tuples and numpy scalars as JSON reads them back.


def _protocol_in(path: pathlib.Path, weights_path: bool = False) -> Any:
  """The comparable protocol of the result file at ``path``; None when it cannot be read."""
  try:
    return _comparable(json.loads(path.read_text(encoding='utf-8')).get('protocol'),
                       weights_path)
  except (OSError, ValueError, AttributeError):
    return None


def result_path(workdir: str, name: str, protocol: dict[str, Any]) -> pathlib.Path:
  """Where a result of ``protocol`` goes: ``<workdir>/<name>.json``, unless that holds a result
  under another protocol (other weights, reference, sample count, EMA, ...), which is kept: the
  new one then goes to the first ``<name>-<n>.json`` (n = 2, 3, ...) that is free or holds the
  same protocol, and a warning says which settings differ."""
  wanted = _comparable(protocol)
  first = pathlib.Path(workdir) / f'{name}.json'
  path = first
  for n in itertools.count(2):
    if not path.exists() or _protocol_in(path) == wanted:
      break
    path = pathlib.Path(workdir) / f'{name}-{n}.json'
  if path != first:
    # Named from the protocols with their weights paths: an older result without the digest
    # differs by the digest, not by a path that may well be the same.
    earlier, now = _protocol_in(first, weights_path=True), _comparable(protocol, True)
    differ = (sorted(key for key in set(now) | set(earlier) if earlier.get(key) != now.get(key))
              if isinstance(earlier, dict) else ['(unreadable)'])
    logging.warning('%s holds a result under another protocol (differing: %s); it is kept, and '
                    'this one goes to %s.', first.name, ', '.join(differ), path.name)
  return path


def intra_fid(workdir: str, inception_weights: str | None, *, num_samples: int = 5_000,
              num_reference: int = 50_000, step: int | None = None, batch_size: int = 200,
              preprocessing: str = 'pytorch_fid', precision: str = 'default',
              use_ema: bool = True, seed: int = 0) -> dict[str, Any]:
  """Intra-FID of a class-conditional run: the mean over its classes of the FID of each class.

  Class ``k`` is scored as ``evaluate(..., label=k)`` does it (``num_samples`` images of class
  ``k`` against the dataset's images of class ``k``, cached per class, each with its own
  ``eval_step_XXXXXX_class<k>.json``), with one Inception network, one restored generator and
  at most one read of the dataset for all classes. The summary is written to
  ``<workdir>/eval_step_XXXXXX_intra.json``.

  Args:
    num_samples: Generated images per class.
    num_reference: Dataset images per class at most (each class has its own reference).
    Others: as :func:`evaluate`.

  Returns:
    ``{'step', 'intra_fid', 'classes': [{'label', 'fid', 'inception_score', 'kid', 'precision',
    'recall', 'num_reference', 'path'}, ...], 'protocol', 'path'}``.

  Raises:
    UserError: an unconditional run, or any mistake :func:`evaluate` refuses.
  """
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

  _check_counts(num_samples, batch_size, num_reference)
  workdir = os.fspath(pathlib.Path(workdir).expanduser().absolute())
  config = load_run_config(workdir)
  num_classes = int(config.get('num_classes', 0) or 0)
  if not num_classes:
    raise UserError('--intra_fid scores each class of a class-conditional run; this run was '
                    'trained without labels (num_classes 0). Leave --intra_fid out for its FID.')
  extractor = evaluation.InceptionExtractor.from_file(
      inception_weights, preprocessing=preprocessing, precision=precision, batch_size=batch_size)
  loaded = load_generator(workdir, config, step, use_ema)
  load_labelled = functools.cache(lambda: data.load_all_images(config, with_labels=True))
  classes = []
  for label in range(num_classes):
    result = _score(workdir, config, extractor, loaded, num_samples=num_samples, seed=seed,
                    batch_size=batch_size, label=label, file_ref=None,
                    num_reference=num_reference, inception_weights=inception_weights,
                    load_labelled=load_labelled)
    logging.info('Class %d: FID %.4f', label, result['fid'])
    classes.append({'label': label, 'num_reference': result['protocol']['reference']['num_samples'],
                    'path': result['path'],
                    **{key: result[key] for key in ('fid', 'inception_score', 'kid', 'precision',
                                                    'recall')}})
  step, used_ema = loaded[2], loaded[3]
  summary = {
      'step': step, 'intra_fid': float(np.mean([c['fid'] for c in classes])),
      'classes': classes,
      'protocol': {
          'num_samples_per_class': int(num_samples), 'seed': int(seed), 'latents': LATENTS,
          'used_ema': bool(used_ema), 'num_classes': num_classes,
          'reference': 'the dataset images of each class (cached per class)',
          'num_reference_per_class_requested': int(num_reference),
          'preprocessing': extractor.preprocessing, 'precision': extractor.precision,
          'inception_weights': os.path.abspath(inception_weights) if inception_weights else None,
          FINGERPRINT_KEY: _fingerprint(extractor),
          'dataset': str(config.dataset), 'image_size': int(config.image_size)},
  }
  path = _write_result(
      result_path(workdir, f'eval_step_{step:06d}_intra', summary['protocol']), summary)
  summary['path'] = str(path)
  return summary


def format_intra_result(result: dict[str, Any]) -> str:
  """A few lines: the intra-FID, its protocol and each class's FID."""
  protocol = result['protocol']
  lines = [f"Step {result['step']} ({'EMA' if protocol['used_ema'] else 'trained'} weights): "
           f"intra-FID {result['intra_fid']:.4f}, the mean FID of {protocol['num_classes']} "
           f"classes ({protocol['num_samples_per_class']} generated images per class, seed "
           f"{protocol['seed']}, each against the dataset's images of its class; "
           f"preprocessing {protocol['preprocessing']})."]
  lines += [f"  class {c['label']}: FID {c['fid']:.4f} ({c['num_reference']} reference images)"
            for c in result['classes']]
  lines.append(f"Written to {result['path']} (and one eval_step_*_class<k>.json per class)")
  return '\n'.join(lines)


def format_result(result: dict[str, Any]) -> str:
  """A few human-readable lines: the scores and the protocol they were measured with."""
  protocol = result['protocol']
  reference = protocol['reference']
  ref_count = reference.get('num_samples')
  ref_text = (f"{reference['source']} ({ref_count if ref_count else 'unknown number of'} "
              'images)')
  kid = protocol['kid']
  if result['kid'] is None:
    kid_text = f"KID skipped: {kid['skipped']}"
  elif kid['subsets'] == 1:
    kid_text = f"KID {result['kid']:.6f} (all {kid['subset_size']} features of each side, once)"
  else:
    kid_text = (f"KID {result['kid']:.6f} ± {result['kid_std']:.6f} ({kid['subsets']} subsets "
                f"of {kid['subset_size']})")
  manifold = protocol.get('precision_recall', {'skipped': 'not computed'})
  manifold_text = (
      f"Precision {result['precision']:.4f}, recall {result['recall']:.4f}, density "
      f"{result['density']:.4f}, coverage {result['coverage']:.4f} (k={manifold['k']}, "
      f"{manifold['num_generated_features']} generated vs {manifold['num_reference_features']} "
      'reference features)' if result.get('precision') is not None
      else f"Precision/recall skipped: {manifold['skipped']}")
  return '\n'.join([
      f"Step {result['step']} ({'EMA' if protocol['used_ema'] else 'trained'} weights): "
      f"{protocol['num_samples']} generated images"
      f"{'' if protocol.get('label') is None else ' of class ' + str(protocol['label'])}, "
      f"seed {protocol['seed']}.",
      f"Reference: {ref_text}; preprocessing {protocol['preprocessing']}, precision "
      f"{protocol['precision']}.",
      f"FID {result['fid']:.4f}",
      f"IS {result['inception_score']:.4f} ± {result['inception_score_std']:.4f} "
      f"({_splits_text(protocol['inception_score_splits'], protocol['num_samples'])})",
      kid_text,
      manifold_text,
      f"Written to {result['path']}",
  ])


def _splits_text(splits: int, num_samples: int) -> str:
  size = num_samples // splits
  sizes = f'{size}-{size + 1}' if num_samples % splits else f'{size}'
  return f"{splits} split{'' if splits == 1 else 's'} of {sizes} images"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'Unexpected arguments {" ".join(argv[1:])!r}; pass options as --name=value.')
  if not FLAGS.workdir:
    _fail('--workdir is required: the directory of a training run.')
  cli_logging.quiet_library_logs(not FLAGS.library_logs)
  try:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    cli_logging.no_progress_bars_off_a_terminal()  # (It may prepare the dataset.)
    label = class_names.parse_label(FLAGS.label, FLAGS.workdir)
    if FLAGS.intra_fid:
      if label is not None or FLAGS.reference:
        raise UserError('--intra_fid scores every class against its own dataset images; it '
                        'cannot be combined with --label or --reference.')
      print(format_intra_result(intra_fid(
          FLAGS.workdir, FLAGS.inception_weights, num_samples=FLAGS.num_samples,
          num_reference=FLAGS.num_reference, step=FLAGS.step, batch_size=FLAGS.batch_size,
          preprocessing=FLAGS.preprocessing, precision=FLAGS.precision,
          use_ema=not FLAGS.no_ema, seed=FLAGS.seed)))
      return
    result = evaluate(FLAGS.workdir, FLAGS.inception_weights, num_samples=FLAGS.num_samples,
                      reference=FLAGS.reference, num_reference=FLAGS.num_reference,
                      step=FLAGS.step, batch_size=FLAGS.batch_size,
                      preprocessing=FLAGS.preprocessing, precision=FLAGS.precision,
                      use_ema=not FLAGS.no_ema, seed=FLAGS.seed, label=label)
  except UserError as e:
    logging.flush()
    _fail(str(e))
  print(format_result(result))


def parse_flags(argv: list[str]) -> list[str]:
  """Parses this program's flags, then absl's own (--verbosity, ...); mistakes exit 2."""
  return command_line.parse_private_flags(FLAGS, argv, __doc__)


def run() -> None:
  """Console entry point."""
  # The reference cache and the result are written through temporary files: whole or absent.
  command_line.run_app(main, parse_flags, 'No half-written file was left.')


if __name__ == '__main__':
  run()
