r"""FID between two sets of images, with pytorch-fid's command line (its dashed flag spellings,
``--batch-size``, ``--save-stats``, ``--dims 2048``, ``--device``, ``--num-workers``, work too).

  python -m dcgan_jax.fid PATH1 PATH2 [--inception_weights=pt_inception-2015-12-05-6726825d.pth]
      [--batch_size=50] [--preprocessing=pytorch_fid|tf] [--precision=default|high|highest]
      [--precision_recall]
  python -m dcgan_jax.fid PATH --save_stats=stats.npz
  python -m dcgan_jax.fid --save-stats PATH stats.npz      # pytorch-fid's spelling of it

Each PATH is one of:

* a folder (searched recursively) or a .zip of images (.jpg .jpeg .png .webp .bmp .tif .tiff .ppm
  .pgm, pytorch-fid's set, in any case; hidden files are left out). The images
  are read as pytorch-fid reads them: decoded by PIL, converted to RGB, at their own size (the
  network resizes them to 299x299), so the samples of any GAN, saved as files, can be scored.
  Images may differ in size: images of one size share batches, in whatever order the sizes
  come, and each size compiles the network for its full batches and once more for its last,
  part batch (resize folders of many sizes, for speed). Files that cannot be decoded are
  skipped and counted.
* a ``mu``/``sigma`` .npz of statistics: pytorch-fid's ``--save-stats`` output, or a file this
  program wrote with ``--save_stats`` (which records the image count and preprocessing too, and
  is also what ``dcgan_jax.evaluate --reference`` takes).

Prints ``FID: <value>``. With ``--precision_recall`` (the first PATH the real or reference set,
the second the generated one) it also prints precision, recall, density and coverage (k = 3,
:mod:`dcgan_jax.evaluation.manifold`) of the first 10,000 images of each. A statistics file
serves as a PATH there when it holds features: ``--save_stats`` with ``--precision_recall``
stores those of the first 10,000 images beside ``mu`` and ``sigma`` (and ``dcgan_jax.evaluate
--reference`` then computes KID and precision/recall too).
Mistakes (a missing path, a folder without images, bad weights, ...)
print one sentence on stderr and exit with status 2.
"""

from __future__ import annotations

import io
import os
from typing import Any

from absl import flags
from absl import logging
import numpy as np

from dcgan_jax import cli_logging
from dcgan_jax import command_line
from dcgan_jax.errors import UserError, exit_with_user_error

# A private flag set, so that this module can share a process with the other programs.
FLAGS = flags.FlagValues()

flags.DEFINE_string('inception_weights', None, 'pt_inception-2015-12-05-6726825d.pth or an .npz '
                    'copy; empty means the cached download (python -m '
                    'dcgan_jax.evaluation.download_weights).', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 50, 'Images per Inception batch (pytorch-fid: 50).',
                     flag_values=FLAGS)
flags.DEFINE_enum('preprocessing', 'pytorch_fid', ['pytorch_fid', 'tf'], 'Inception input '
                  'preprocessing: pytorch_fid (default) or tf (TTUR, torch-fidelity).',
                  flag_values=FLAGS)
flags.DEFINE_enum('precision', 'default', ['default', 'high', 'highest'], 'Matmul/conv '
                  'precision of the Inception network.', flag_values=FLAGS)
flags.DEFINE_string('save_stats', None, 'Write the statistics of the one PATH to this .npz '
                    'instead of computing an FID.', flag_values=FLAGS)
flags.DEFINE_bool('precision_recall', False, 'Also print precision, recall, density and '
                  'coverage of the second PATH against the first (k=3 on the Inception pool_3 '
                  'features of up to 10,000 images each); with --save_stats, store those '
                  'features in the file.', flag_values=FLAGS)
flags.DEFINE_bool('library_logs', False, 'Also print the INFO logs of JAX start-up (hidden by '
                  'default; warnings and errors always show).', flag_values=FLAGS)

_fail = exit_with_user_error
# Decoded images held back while they wait for a full batch of their size (image_statistics).
_MAX_PENDING_BYTES = 1 << 30
# `--save_stats` set by pytorch-fid's bare `--save-stats`: the second PATH is the file to write.
SECOND_PATH = '<the second PATH>'


def _check_count(path: str, count: int, what: str) -> None:
  """A covariance needs 2 images: named by PATH, before Inception runs where possible."""
  if count < 2:
    raise UserError(f'{path} holds {count} {what}; FID needs at least 2 images per PATH (and '
                    'thousands for a meaningful value: 50,000 is standard).')


def _check_manifold_count(path: str, count: int, what: str) -> None:
  """Precision/recall need more than k images per PATH: said before Inception runs."""
  from dcgan_jax.evaluation import manifold  # pylint: disable=g-import-not-at-top
  if count <= manifold.DEFAULT_K:
    raise UserError(f'{path} holds {count} {what}; --precision_recall (k={manifold.DEFAULT_K}) '
                    f'needs more than {manifold.DEFAULT_K} per PATH (and thousands for '
                    'meaningful values); drop --precision_recall or give more images.')


def _is_statistics_file(path: str) -> bool:
  return path.lower().endswith('.npz') and os.path.isfile(path)


def _decode_rgb(data: bytes | None) -> np.ndarray | None:
  """pytorch-fid's reading: PIL, converted to RGB, at the file's own size; None if unreadable.

  One difference: 16-bit grey files are scaled to 8 bits first. PIL's conversion (and so
  pytorch-fid) clips them at 255, which makes nearly every pixel white; 8-bit files, the usual
  case, are read exactly as pytorch-fid reads them.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top

  if data is None:
    return None
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image_files.eight_bit_grey(image).convert('RGB'), np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def image_statistics(path: str, extractor,
                     keep_features: int = 0) -> tuple[Any, int, np.ndarray | None]:
  """Inception pool statistics of the images under a folder or in a .zip.

  Images are batched by size, in batches of the extractor's ``batch_size``: each size fills
  its own batch however the sizes alternate in the folder, so the network compiles for one
  full batch per size, plus one smaller (power-of-two, padded) batch per size for the
  remainder. The statistics accumulate in float64; they do not depend on the order.

  Args:
    path: a folder (searched recursively) or a .zip of images.
    extractor: an ``evaluation.InceptionExtractor``.
    keep_features: also return the pool features of this many images (the first batches to go
      through the network), e.g. for precision and recall; 0 keeps none.

  Returns:
    (``evaluation.FeatureStatistics``, number of files skipped because they could not be read,
    the kept ``[n, 2048]`` features or None).

  Raises:
    UserError: the path is missing, not a folder or .zip, or holds no image that can be read.
  """
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top

  files = image_files.ImageFiles(path, what='path')
  stats = evaluation.FeatureStatistics()
  skipped = 0
  pending: dict[tuple[int, ...], list[np.ndarray]] = {}  # Images waiting, by shape.
  pending_bytes = 0
  kept: list[np.ndarray] = []
  num_kept = 0

  def flush(shape):
    nonlocal num_kept, pending_bytes
    batch = pending.pop(shape)
    pending_bytes -= len(batch) * batch[0].nbytes
    images = np.stack(batch)
    # A part batch is padded to a power of two: a few shapes to compile, not one per length.
    padded = min(extractor.batch_size, 1 << (len(batch) - 1).bit_length())
    if padded > len(batch):
      images = np.concatenate([images, np.zeros((padded - len(batch),) + images.shape[1:],
                                                images.dtype)])
    pool = extractor(images)['pool'][:len(batch)]
    stats.update(pool)
    if num_kept < keep_features:
      kept.append(np.asarray(pool[:keep_features - num_kept], np.float32))
      num_kept += kept[-1].shape[0]

  for _, data in files.read_all(files.names):
    image = _decode_rgb(data)
    if image is None:
      skipped += 1
      continue
    group = pending.setdefault(image.shape, [])
    group.append(image)
    pending_bytes += image.nbytes
    if len(group) == extractor.batch_size:
      flush(image.shape)
    elif pending_bytes > _MAX_PENDING_BYTES:
      # Many sizes, each with a part batch: the fullest goes first, to bound the memory.
      flush(max(pending, key=lambda shape: len(pending[shape]) * pending[shape][0].nbytes))
  for shape in list(pending):  # The part batches, in the order their sizes first came.
    flush(shape)
  if stats.count == 0:
    raise UserError(f'None of the {len(files.names)} image files under {files.path} could be '
                    'read; give a folder or .zip of JPEG/PNG/WebP/BMP/TIFF/PPM images.')
  _check_count(path, stats.count, f'readable images (of {len(files.names)} files)')
  if skipped:
    logging.warning('Skipped %d of %d files under %s that could not be read as images.',
                    skipped, len(files.names), files.path)
  return stats, skipped, (np.concatenate(kept) if keep_features else None)


def _recorded(path: str, *keys: str) -> tuple[str | None, ...]:
  """What a statistics file records under each of ``keys`` (the Inception fingerprint, its
  arithmetic), None for each it lacks (and for image PATHs). Reads those entries alone, in one
  opening of the archive."""
  if not _is_statistics_file(path):
    return (None,) * len(keys)
  with np.load(path, allow_pickle=False) as archive:
    return tuple((str(archive[key]) or None) if key in archive.files else None for key in keys)


def path_statistics(path: str, make_extractor, preprocessing: str = 'pytorch_fid',
                    keep_features: int = 0) -> tuple[Any, str, np.ndarray | None]:
  """The statistics a PATH stands for, a description of them for the report, and (for image
  sets, with ``keep_features``) the features of its first images."""
  if _is_statistics_file(path):
    # As `evaluate --reference` reads one: 2048 dims checked, a preprocessing that differs
    # from the extractor's is warned about.
    from dcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
    stats, protocol = evaluate.file_reference(path, preprocessing)
    features = protocol['features']
    if keep_features and features is None:
      raise UserError(f'--precision_recall needs per-image features, but the statistics file '
                      f'{path} holds none; give the folder or .zip it was made from, or make it '
                      'with --save_stats and --precision_recall.')
    count = f'{stats.count} images' if stats.count else 'unknown number of images'
    with_features = f', {features.shape[0]} features' if features is not None else ''
    return stats, (f'{path}: statistics file ({count}{with_features}, preprocessing '
                   f'{protocol["preprocessing"] or "unknown"})'), (
                       features[:keep_features] if keep_features and features is not None
                       else None)
  extractor = make_extractor()
  stats, skipped, features = image_statistics(path, extractor, keep_features)
  note = f', {skipped} unreadable files skipped' if skipped else ''
  return stats, f'{path}: {stats.count} images{note}', features


def fid(paths: list[str], inception_weights: str | None = None, *, batch_size: int = 50,
        preprocessing: str = 'pytorch_fid', precision: str = 'default',
        save_stats: str | None = None, precision_recall: bool = False) -> dict[str, Any]:
  """FID between two PATHs, or (with ``save_stats``) the statistics of one PATH, saved.

  Args:
    paths: two PATHs (one with ``save_stats``): folders or .zips of images, or statistics files.
    inception_weights: the FID Inception weights (.pth or .npz); None means the cached download.
    batch_size: images per Inception batch.
    preprocessing: 'pytorch_fid' or 'tf'.
    precision: matmul/conv precision of the network.
    save_stats: write the statistics of ``paths[0]`` here (an .npz) instead.
    precision_recall: also compute precision, recall, density and coverage of ``paths[1]``
      (generated) against ``paths[0]`` (real), on the features of up to
      ``evaluate.MAX_KID_FEATURES`` images of each (a statistics file must hold features);
      with ``save_stats``, store those features in the file.

  Returns:
    ``{'fid': float or None, 'sources': [description per path], 'saved': path or None,
    'precision_recall': {'precision', 'recall', 'density', 'coverage', 'k', 'num_features'},
    {'skipped': why} (too few readable images) or None}``.

  Raises:
    UserError: any mistake in the arguments or the files (one sentence).
  """
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top

  if save_stats == SECOND_PATH:  # pytorch-fid's `--save-stats PATH OUTPUT`.
    if len(paths) != 2:
      raise UserError("pytorch-fid's --save-stats takes two PATHs, the images and the .npz to "
                      f'write, got {len(paths)}; or write --save_stats=stats.npz and one PATH.')
    paths, save_stats = paths[:1], paths[1]
    if (not save_stats.lower().endswith('.npz') and not os.path.isdir(save_stats)
        and not save_stats.endswith(('/', os.sep))):
      # pytorch-fid hands the name to numpy, which adds the suffix: `... stats` writes stats.npz.
      # (A folder is refused below, as pytorch-fid refuses an existing OUTPUT.)
      save_stats += '.npz'
  wanted = 1 if save_stats else 2
  if len(paths) != wanted:
    usage = ('one PATH with --save_stats' if save_stats else
             'two PATHs (folders or .zips of images, or .npz statistics)')
    raise UserError(f'Expected {usage}, got {len(paths)}.')
  if batch_size < 1:
    raise UserError(f'--batch_size must be positive (got {batch_size}).')
  if save_stats:
    if _is_statistics_file(paths[0]):
      raise UserError(f'{paths[0]} already is a statistics file; --save_stats needs images.')
    if not save_stats.lower().endswith('.npz'):
      raise UserError(f'--save_stats must name an .npz file (got {save_stats!r}).')
    directory = os.path.dirname(os.path.abspath(save_stats))
    if not os.path.isdir(directory):
      raise UserError(f'The folder of --save_stats, {directory}, does not exist.')
    if os.path.isdir(save_stats):
      raise UserError(f'--save_stats {save_stats} is a folder; name the .npz file to write.')
    if os.path.lexists(save_stats):  # As pytorch-fid ("Existing output file").
      raise UserError(f'--save_stats {save_stats} already exists; remove it or name a new file '
                      '(statistics files are never overwritten).')
    if not os.access(directory, os.W_OK | os.X_OK):
      raise UserError(f'The folder of --save_stats, {directory}, is not writable.')
  # Cheap checks first: every path exists and is usable, before the weights load.
  from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top
  for path in paths:
    if path.lower().endswith('.npz') and not os.path.exists(path):  # (A folder x.npz is read.)
      raise UserError(f'The statistics file {path} does not exist; a PATH is a folder or .zip '
                      'of images, or a mu/sigma .npz.')
    if not _is_statistics_file(path):
      image_files.check_path(path, what='path', needs_images=True)
      count = len(image_files.ImageFiles(path, what='path').names)
      _check_count(path, count, 'image file(s)')
      if precision_recall and not save_stats:
        _check_manifold_count(path, count, 'image file(s)')
    elif precision_recall and not save_stats:
      from dcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
      _, _, features = path_statistics(  # Raises when the file holds no features.
          path, None, preprocessing, keep_features=evaluate.MAX_KID_FEATURES)
      _check_manifold_count(path, features.shape[0], 'features')
  extractor = None

  def make_extractor():
    nonlocal extractor
    if extractor is None:
      extractor = evaluation.InceptionExtractor.from_file(
          inception_weights, preprocessing=preprocessing, precision=precision,
          batch_size=batch_size)
    return extractor

  from dcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
  keep = evaluate.MAX_KID_FEATURES if precision_recall else 0
  results = [path_statistics(path, make_extractor, preprocessing, keep) for path in paths]
  fingerprint = getattr(extractor, 'weights_fingerprint', None)
  if save_stats:
    stats, _, features = results[0]
    extra = {} if features is None else {evaluate.FEATURES_KEY: features}
    if fingerprint:  # So that FIDs against the file check they use the same network.
      extra[evaluate.WEIGHTS_KEY] = fingerprint
    if getattr(extractor, 'arithmetic', None):  # And warn when they run it in another
      extra[evaluate.ARITHMETIC_KEY] = extractor.arithmetic  # arithmetic.
    try:  # (Through a temporary file: readers never see half a file.)
      stats.save(save_stats, preprocessing=preprocessing, source=os.path.abspath(paths[0]),
                 **extra)
    except OSError as e:
      raise UserError(f'Could not write --save_stats {save_stats} '
                      f'({e.strerror or e}); name a file in a writable folder.') from None
    return {'fid': None, 'sources': [results[0][1]], 'saved': save_stats,
            'precision_recall': None}
  records = [_recorded(path, evaluate.WEIGHTS_KEY, evaluate.ARITHMETIC_KEY) for path in paths]
  recorded = [weights for weights, _ in records]
  for path, weights in zip(paths, recorded):
    evaluate.check_same_weights(path, weights, fingerprint)
  if fingerprint is None and all(recorded):  # Two statistics files: no network ran.
    evaluate.check_same_weights(paths[1], recorded[1], recorded[0], other=paths[0])
  arithmetic = [recorded_arithmetic for _, recorded_arithmetic in records]
  ran = getattr(extractor, 'arithmetic', None)
  for path, recorded_arithmetic in zip(paths, arithmetic):
    evaluate.warn_about_other_arithmetic(path, recorded_arithmetic, ran)
  if ran is None:  # Two statistics files.
    evaluate.warn_about_other_arithmetic(paths[1], arithmetic[1], arithmetic[0], other=paths[0])
  (a, _, real), (b, _, fake) = results  # Under 2048 images FeatureStatistics warns.
  value = evaluation.frechet_distance(a, b)
  manifold = None
  if precision_recall:
    k = evaluation.manifold.DEFAULT_K
    try:
      manifold = dict(evaluation.manifold_metrics(real, fake, k=k), k=k,
                      num_features=[int(real.shape[0]), int(fake.shape[0])])
    except UserError as e:  # Too few readable images (counted up front as files): FID stands.
      manifold = {'skipped': str(e)}
  return {'fid': float(value), 'sources': [r[1] for r in results], 'saved': None,
          'precision_recall': manifold}


def main(argv: list[str]) -> None:
  cli_logging.quiet_library_logs(not FLAGS.library_logs)
  for note in _DROPPED_FLAG_NOTES:
    logging.warning('%s', note)
  try:
    result = fid(argv[1:], FLAGS.inception_weights, batch_size=FLAGS.batch_size,
                 preprocessing=FLAGS.preprocessing, precision=FLAGS.precision,
                 save_stats=FLAGS.save_stats, precision_recall=FLAGS.precision_recall)
  except UserError as e:
    logging.flush()
    _fail(str(e))
  for source in result['sources']:
    print(source)
  if result['saved']:
    print(f'Statistics written to {result["saved"]} (preprocessing {FLAGS.preprocessing}).')
  else:
    manifold = result['precision_recall']
    if manifold and 'skipped' in manifold:
      print(f'Precision/recall skipped: {manifold["skipped"]}')
    elif manifold:
      real_count, fake_count = manifold['num_features']
      print(f'Precision: {manifold["precision"]:.4f}  Recall: {manifold["recall"]:.4f}  '
            f'Density: {manifold["density"]:.4f}  Coverage: {manifold["coverage"]:.4f}  '
            f'(k={manifold["k"]}; the second PATH\'s {fake_count} images against the '
            f'first\'s {real_count})')
    print(f'FID: {result["fid"]}')


# pytorch-fid's own flags, as its command line spells them (dashes), and what they become.
_PYTORCH_FID_FLAGS = {'batch-size': 'batch_size', 'save-stats': 'save_stats'}
# pytorch-fid flags that have no counterpart here: accepted (for drop-in scripts) and ignored,
# with a warning (parse_flags collects them in _DROPPED_FLAG_NOTES; main logs them).
_IGNORED_PYTORCH_FID_FLAGS = {
    'device': 'JAX picks the accelerator (CUDA_VISIBLE_DEVICES selects a GPU)',
    'num-workers': 'images are decoded on the main thread, batch by batch',
}
_DROPPED_FLAG_NOTES: list[str] = []


def pytorch_fid_argv(argv: list[str], notes: list[str] | None = None) -> list[str]:
  """pytorch-fid's flag spellings (``--batch-size 50``, ``--save-stats``, ``--dims 2048``,
  ``--device cuda``, ``--num-workers 8``) in this program's terms.

  pytorch-fid's ``--save-stats`` is a switch: its two PATHs are then the images and the .npz to
  write. Here it becomes ``--save_stats=<SECOND_PATH>``, which :func:`fid` resolves; the value
  form ``--save-stats=stats.npz`` is this program's ``--save_stats``.

  Args:
    argv: the arguments after the program name.
    notes: if given, one sentence is appended per flag dropped (``--device``,
      ``--num-workers``), for the program to show once its logging is set up.

  Returns:
    ``argv`` with those flags renamed, or dropped (``--dims 2048``, ``--device``,
    ``--num-workers``); any other ``--dims`` is a UserError (only the 2048-dim pool_3 features
    are computed).
  """
  result, i = [], 0
  while i < len(argv):
    arg = argv[i]
    name, has_value, value = arg[2:].partition('=') if arg.startswith('--') else ('', False, '')
    if name == 'save-stats' and not has_value:
      result.append(f'--save_stats={SECOND_PATH}')
      i += 1
      continue
    takes_value = name in _PYTORCH_FID_FLAGS or name in _IGNORED_PYTORCH_FID_FLAGS or (
        name == 'dims')
    if takes_value and not has_value and i + 1 < len(argv):  # `--flag value`, as argparse.
      value, i = argv[i + 1], i + 1
    i += 1
    if name in _PYTORCH_FID_FLAGS:
      result.append(f'--{_PYTORCH_FID_FLAGS[name]}={value}')
    elif name in _IGNORED_PYTORCH_FID_FLAGS:
      if notes is not None:
        notes.append(f"Ignoring pytorch-fid's --{name}={value}: "
                     f'{_IGNORED_PYTORCH_FID_FLAGS[name]}.')
    elif name == 'dims':
      if value.strip() != '2048':
        raise UserError(f'--dims={value}: this program computes the 2048-dim pool_3 features '
                        "(pytorch-fid's default), the ones FID is reported with; drop --dims.")
    else:
      result.append(arg)
  return result


def parse_flags(argv: list[str]) -> list[str]:
  """Parses this program's flags, then absl's own (--verbosity, ...); mistakes exit 2.

  pytorch-fid's spellings of its flags are accepted too (:func:`pytorch_fid_argv`).
  """
  _DROPPED_FLAG_NOTES.clear()
  try:
    argv = argv[:1] + pytorch_fid_argv(argv[1:], _DROPPED_FLAG_NOTES)  # Passes --help through.
  except UserError as e:
    _fail(str(e))
  return command_line.parse_private_flags(FLAGS, argv, __doc__)


def run() -> None:
  """Console entry point."""
  command_line.run_app(main, parse_flags, 'No half-written file was left.')


if __name__ == '__main__':
  run()
