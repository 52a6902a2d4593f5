"""`python -m dcgan_jax.fid PATH1 PATH2`: FID of two image folders, as pytorch-fid computes it.

The parity check runs pytorch-fid itself (its file reading, its InceptionV3 wrapper and its
Fréchet distance) on the same folders with the same random Inception weights, since tests
cannot download the real ones (tests/evaluation_torch_reference.py).
"""
import logging
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from dcgan_jax import evaluation
from dcgan_jax import fid
from dcgan_jax.errors import EXIT_USER_ERROR

torch = pytest.importorskip('torch')
from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top,wrong-import-position
import evaluation_torch_reference as reference  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = 32


def _write_images(folder, count, seed, size=(SIZE, SIZE), suffix='.png'):
  """`count` RGB images with structure (a gradient plus noise), so that features differ."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 255, size[1])[None, :, None]
  for i in range(count):
    image = np.clip(ramp * rng.uniform(0.2, 1.0) + rng.normal(0, 40, (*size, 3)), 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(folder / f'{i:03d}{suffix}')
  return folder


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  """Random FID-Inception weights as a .pth, and the torch network they came from."""
  net = reference.build_fid_inception(seed=0)
  path = tmp_path_factory.mktemp('weights') / 'random_fid_inception.pth'
  torch.save(net.state_dict(), path)
  return path, net


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  # Inception at 299x299 costs ~0.3 s per image on 2 CPU cores, padding rows included: one
  # batch of 8 per folder.
  return (_write_images(root / 'real', 6, seed=1),
          _write_images(root / 'fake', 5, seed=2))


def _cli(argv, capsys):
  """Runs the program in-process; returns (exit status, stdout, stderr)."""
  status = 0
  try:
    fid.main(fid.parse_flags(['fid', *argv]))
  except SystemExit as e:
    status = e.code
  out, err = capsys.readouterr()
  return status, out, err


def _printed_fid(out):
  return float(out.strip().splitlines()[-1].removeprefix('FID: '))


def test_fid_of_two_folders_matches_pytorch_fid(weights, folders, tmp_path, capsys):
  path, net = weights
  status, out, err = _cli([str(folders[0]), str(folders[1]), f'--inception_weights={path}',
                           '--precision=highest', '--batch_size=8', '--precision_recall'],
                          capsys)
  assert status == 0, err
  assert f'{folders[0]}: 6 images' in out and f'{folders[1]}: 5 images' in out
  ours = _printed_fid(out)
  out_with_folders = out

  # pytorch-fid on the same files: its reading (PIL, RGB), resize and network, and its moments
  # (calculate_activation_statistics: mean, np.cov). The distance is taken with ours, which
  # tests/test_evaluation_statistics.py checks against pytorch-fid's (whose scipy sqrtm takes
  # ~25 s at 2048 dimensions on 2 cores).
  model = reference.pytorch_fid_wrapper(net)
  features = [fid_score.get_activations(sorted(map(str, f.glob('*.png'))), model, batch_size=5,
                                        dims=2048, device='cpu', num_workers=0)
              for f in folders]
  moments = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in features]
  expected = evaluation.frechet_distance(*moments[0], *moments[1])
  assert expected > 0
  # FID_FACTS' published 1e-6 agreement is for full-rank statistics. With 6 and 5 images the
  # covariances have rank 5 and 4 in 2048 dimensions, and the features' float32 noise (ours and
  # torch's agree to ~1e-6 of their largest value, checked below) moves this FID by 2e-6
  # (measured with torch 2.14.1, pillow 13, numpy 2.4; 1e-6 passed with earlier builds).
  assert ours == pytest.approx(expected, rel=1e-5)
  # --precision_recall: the same numbers as on pytorch-fid's features (second PATH generated).
  manifold = evaluation.manifold_metrics(features[0], features[1])
  assert (f'Precision: {manifold["precision"]:.4f}  Recall: {manifold["recall"]:.4f}  '
          f'Density: {manifold["density"]:.4f}  Coverage: {manifold["coverage"]:.4f}  '
          "(k=3; the second PATH's 5 images against the first's 6)") in out

  # --save_stats writes pytorch-fid's mu/sigma (plus the count); they equal its moments, and an
  # FID against the file equals the FID against the folder.
  # With --precision_recall the file also keeps the per-image features, so that it can stand in
  # for the folder there too.
  stats_path = tmp_path / 'real_stats.npz'
  # (pytorch-fid's spelling: --save-stats, then the images and the file to write.)
  status, out, err = _cli(['--save-stats', str(folders[0]), str(stats_path),
                           f'--inception_weights={path}', '--precision=highest',
                           '--batch_size=8', '--precision_recall'], capsys)
  assert status == 0, err
  assert f'Statistics written to {stats_path}' in out
  with np.load(stats_path) as saved:
    assert int(saved['num_samples']) == 6 and str(saved['preprocessing']) == 'pytorch_fid'
    # Which network made it: an FID against it with other weights is refused.
    assert len(str(saved['inception_weights'])) == 16
    # And in what arithmetic (on a CPU, float32 whatever the precision).
    assert str(saved['inception_arithmetic']) == 'float32'
    # To ~1e-6 of the largest feature (measured 9.9e-7): the float32 noise the FID above sees.
    np.testing.assert_allclose(saved['kid_features'], features[0], rtol=0,
                               atol=1e-5 * np.abs(features[0]).max())
    scale = np.abs(moments[0][1]).max()
    np.testing.assert_allclose(saved['mu'], moments[0][0], atol=1e-4 * np.abs(moments[0][0]).max())
    np.testing.assert_allclose(saved['sigma'], moments[0][1], atol=1e-4 * scale)
    saved_mu, saved_sigma = saved['mu'], saved['sigma']
  # A statistics file as PATH is read as it is: no network, no weights.
  def no_network():
    raise AssertionError('a statistics file needs no Inception network')

  stats, description, kept = fid.path_statistics(str(stats_path), no_network)
  assert kept is None  # Features are handed out only when asked for.
  assert description.endswith('statistics file (6 images, 6 features, preprocessing pytorch_fid)')
  np.testing.assert_array_equal(stats.mean, saved_mu)
  np.testing.assert_array_equal(stats.covariance, saved_sigma)
  # The file in place of the real folder: the same FID and the same precision/recall line.
  status, again, err = _cli([str(stats_path), str(folders[1]), f'--inception_weights={path}',
                             '--precision=highest', '--batch_size=8', '--precision_recall'],
                            capsys)
  assert status == 0, err
  assert _printed_fid(again) == pytest.approx(ours, rel=1e-6)
  assert [l for l in again.splitlines() if l.startswith('Precision')] == [
      l for l in out_with_folders.splitlines() if l.startswith('Precision')]


def test_a_zip_of_mixed_sizes_with_a_broken_file(weights, folders, tmp_path, capsys):
  """Subfolders, two image sizes and an unreadable file: the readable images count, the rest
  is reported; a folder and a .zip of the same files give the same statistics."""
  path, _ = weights
  folder = tmp_path / 'mixed'
  _write_images(folder / 'a', 2, seed=3)
  _write_images(folder / 'b', 1, seed=4, size=(24, 20), suffix='.jpg')
  (folder / 'b' / 'broken.png').write_bytes(b'not an image')
  archive = tmp_path / 'mixed.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for file in sorted(folder.rglob('*')):
      if file.is_file():
        z.write(file, file.relative_to(folder).as_posix())
  extractor = evaluation.InceptionExtractor.from_file(path, precision='highest', batch_size=8)
  from_folder, skipped, _ = fid.image_statistics(str(folder), extractor)
  from_zip, zip_skipped, zip_features = fid.image_statistics(str(archive), extractor,
                                                             keep_features=2)
  assert (from_folder.count, skipped) == (from_zip.count, zip_skipped) == (3, 1)
  np.testing.assert_allclose(from_folder.mean, from_zip.mean, rtol=1e-6, atol=1e-7)
  # The same as the network applied to the decoded images directly, size group by size group.
  decoded = [[np.asarray(Image.open(f).convert('RGB')) for f in sorted((folder / d).iterdir())
              if f.suffix != '.png' or f.name != 'broken.png'] for d in ('a', 'b')]
  pool = np.concatenate([extractor(np.stack(group))['pool'] for group in decoded])
  np.testing.assert_allclose(from_folder.mean, pool.mean(0), rtol=1e-5,
                             atol=1e-6 * np.abs(pool).max())
  # keep_features keeps the first images' features, in file order, across size groups.
  np.testing.assert_allclose(zip_features, pool[:2], rtol=1e-5, atol=1e-6 * np.abs(pool).max())

  status, out, err = _cli([str(archive), f'--save_stats={tmp_path / "mixed.npz"}',
                           f'--inception_weights={path}', '--precision=highest',
                           '--batch_size=8'], capsys)
  assert status == 0, err
  assert f'{archive}: 3 images, 1 unreadable files skipped' in out
  saved, _ = evaluation.FeatureStatistics.load(tmp_path / 'mixed.npz')
  np.testing.assert_allclose(saved.mean, from_zip.mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('args,message', [
    (['{t}/nowhere', '{real}'], 'does not exist'),
    (['{t}/nowhere.npz', '{real}'], 'The statistics file'),
    (['{real}'], 'Expected two PATHs'),
    (['{real}', '{fake}', '{real}'], 'Expected two PATHs'),
    (['{real}', '--save_stats={t}/out.txt'], '--save_stats must name an .npz file'),
    (['{real}', '--save_stats={t}/no/such/folder/s.npz'], 'does not exist'),
    (['{t}/empty', '{real}'], 'holds no images'),
    (['{t}/bad.npz', '{real}'], 'bad.npz is not a statistics file'),
    (['{t}/cut.npz', '{real}'], 'cut.npz (damaged or cut short?)'),
    (['{real}', '--save_stats={t}/folder.npz'], 'folder.npz is a folder; name the .npz file'),
    (['{real}', '--save_stats={t}/kept.npz'], 'kept.npz already exists; remove it or name a new'),
    (['{t}/w_a.npz', '{t}/w_b.npz'], 'w_b.npz was computed with other Inception weights '
                                     '(fingerprint bbbb) than {t}/w_a.npz (aaaa); FIDs from'),
    (['--save-stats', '{real}', '{t}/kept.npz'], 'kept.npz already exists'),
    # pytorch-fid's numpy adds the suffix to an OUTPUT without it: so does this spelling.
    (['--save-stats', '{real}', '{t}/kept'], 'kept.npz already exists'),
    # ...but never to a folder, as pytorch-fid refuses an existing OUTPUT.
    (['--save-stats', '{real}', '{t}/empty'], "must name an .npz file (got '{t}/empty')"),
    (['--save-stats', '{real}', '{t}/new_folder/'], '--save_stats must name an .npz file'),
    (['--save-stats', '{real}'], "pytorch-fid's --save-stats takes two PATHs"),
    (['{real}', '{t}/three', '--precision_recall'],
     'three holds 3 image file(s); --precision_recall (k=3) needs more than 3 per PATH'),
    (['{real}', '{fake}', '--inception_weights={t}/missing.pth'], 'not found'),
    (['{real}', '{fake}', '--batch_size=0'], '--batch_size must be positive'),
    (['{real}', '{t}/stats.npz', '--precision_recall'], 'holds none; give the folder'),
    (['{real}', '{t}/one'], '/one holds 1 image file(s); FID needs at least 2 images per PATH'),
    (['{t}/one', '--save_stats={t}/one.npz'], 'FID needs at least 2 images per PATH'),
    (['{real}', '{fake}', '--dims=768'], '--dims=768: this program computes the 2048-dim'),
    (['{real}', '{fake}', '--batch_siz=8'], 'Unknown flag --batch_siz; did you mean '
                                            '--batch_size?'),
])
def test_mistakes_are_one_line_and_exit_2(folders, tmp_path, capsys, args, message):
  (tmp_path / 'empty').mkdir()
  _write_images(tmp_path / 'one', 1, seed=3)
  (tmp_path / 'bad.npz').write_bytes(b'junk')
  evaluation.FeatureStatistics().update(np.ones((3, 2048))).save(tmp_path / 'stats.npz')
  (tmp_path / 'cut.npz').write_bytes((tmp_path / 'stats.npz').read_bytes()[:1000])
  (tmp_path / 'folder.npz').mkdir()
  _write_images(tmp_path / 'three', 3, seed=4)
  (tmp_path / 'kept.npz').write_bytes((tmp_path / 'stats.npz').read_bytes())
  kept = (tmp_path / 'kept.npz').read_bytes()
  for name, weights in (('w_a.npz', 'aaaa'), ('w_b.npz', 'bbbb')):
    features = np.random.default_rng(len(name)).normal(size=(5, 2048))
    evaluation.FeatureStatistics().update(features).save(tmp_path / name, inception_weights=weights)
  message = message.format(t=tmp_path)
  argv = [a.format(t=tmp_path, real=folders[0], fake=folders[1]) for a in args]
  before = sorted(p.name for p in tmp_path.iterdir())
  status, out, err = _cli(argv, capsys)
  assert status == EXIT_USER_ERROR, (out, err)
  lines = err.strip().splitlines()
  assert message in lines[-1] and 'Traceback' not in err, err
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # Nothing written.
  assert (tmp_path / 'kept.npz').read_bytes() == kept  # An earlier file is never overwritten.


def test_pytorch_fids_flag_spellings_work():
  """Scripts written for pytorch-fid (argparse: dashes, `--flag value`; --save-stats a switch
  whose two PATHs are the images and the file to write) run unchanged."""
  positional = fid.parse_flags(['fid', 'real', 'fake', '--batch-size', '16', '--dims=2048',
                                '--device', 'cuda:0', '--num-workers=4'])
  assert positional == ['fid', 'real', 'fake']
  assert (fid.FLAGS.batch_size, fid.FLAGS.save_stats) == (16, None)
  # The dropped flags are said (main logs these once logging is set up).
  assert fid._DROPPED_FLAG_NOTES == [  # pylint: disable=protected-access
      "Ignoring pytorch-fid's --device=cuda:0: JAX picks the accelerator (CUDA_VISIBLE_DEVICES "
      'selects a GPU).',
      "Ignoring pytorch-fid's --num-workers=4: images are decoded on the main thread, batch by "
      'batch.']
  for argv in (['--save-stats', 'real', 's.npz'], ['real', 's.npz', '--save-stats'],
               ['real', '--save-stats', 's.npz', '--batch-size', '8']):
    assert fid.parse_flags(['fid', *argv]) == ['fid', 'real', 's.npz']
    assert fid.FLAGS.save_stats == fid.SECOND_PATH
  assert fid.parse_flags(['fid', 'a', '--save-stats=t.npz']) == ['fid', 'a']
  assert fid.FLAGS.save_stats == 't.npz'
  assert fid.parse_flags(['fid', 'a', '--save_stats=t.npz']) == ['fid', 'a']
  assert (fid.FLAGS.batch_size, fid.FLAGS.save_stats) == (50, 't.npz')  # Reset between parses.
  # '~' after '--flag=' is left to the program by the shell: it is expanded as in PATHs.
  fid.parse_flags(['fid', 'a', '--save_stats=~/t.npz', '--inception_weights=~/w.pth'])
  assert fid.FLAGS.save_stats == os.path.expanduser('~/t.npz') != '~/t.npz'
  assert fid.FLAGS.inception_weights == os.path.expanduser('~/w.pth')


def test_files_are_read_as_pytorch_fid_reads_them_but_16_bit_grey_is_scaled(tmp_path):
  """8-bit files: PIL's convert('RGB'), exactly (alpha dropped, grey repeated). 16-bit grey:
  scaled to 8 bits, where PIL (and so pytorch-fid) would clip it to nearly all white."""
  import io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)

  def encoded(image):
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()

  for mode, shape in (('RGB', (5, 7, 3)), ('RGBA', (5, 7, 4)), ('L', (5, 7))):
    image = Image.fromarray(rng.integers(0, 256, shape, np.uint8), mode)
    np.testing.assert_array_equal(fid._decode_rgb(encoded(image)),  # pylint: disable=protected-access
                                  np.asarray(image.convert('RGB')))
  wide = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
  decoded = fid._decode_rgb(encoded(Image.fromarray(wide)))  # pylint: disable=protected-access
  assert decoded.shape == (4, 256, 3) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded[..., 0], np.round(wide / 257.0).astype(np.uint8))
  assert np.mean(np.asarray(Image.fromarray(wide).convert('RGB')) == 255) > 0.9  # PIL's way.
  assert fid._decode_rgb(b'not an image') is None  # pylint: disable=protected-access


class _RecordingExtractor:
  """Stands in for Inception: features are each image's mean and spread; calls are recorded."""
  batch_size = 4

  def __init__(self):
    self.shapes = []

  def __call__(self, images):
    self.shapes.append(images.shape)
    pixels = images.reshape(len(images), -1).astype(np.float64)
    return {'pool': np.stack([pixels.mean(1), pixels.std(1)], axis=1)}


def test_images_of_each_size_share_batches_however_the_sizes_alternate(tmp_path):
  """Sizes alternating in file order still fill whole batches (one shape to compile per size
  and a padded remainder), and the padding rows never reach the statistics."""
  folder = tmp_path / 'alternating'
  folder.mkdir()
  rng = np.random.default_rng(0)
  sizes = ['a', 'b'] * 5 + ['a', 'a']  # 7 of 16x16, 5 of 12 wide x 20 high.
  decoded = []
  for i, size in enumerate(sizes):
    shape = (16, 16, 3) if size == 'a' else (20, 12, 3)
    pixels = rng.integers(0, 256, shape, np.uint8)
    Image.fromarray(pixels).save(folder / f'{i:02d}.png')
    decoded.append(pixels)
  extractor = _RecordingExtractor()
  stats, skipped, kept = fid.image_statistics(str(folder), extractor, keep_features=20)
  assert extractor.shapes == [(4, 16, 16, 3), (4, 20, 12, 3),  # Full batches as they fill.
                              (4, 16, 16, 3), (1, 20, 12, 3)]  # Remainders: 3 padded to 4; 1.
  assert (stats.count, skipped, kept.shape) == (12, 0, (12, 2))
  expected = np.array([[d.astype(np.float64).mean(), d.astype(np.float64).std()]
                       for d in decoded])
  np.testing.assert_allclose(stats.mean, expected.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.covariance, np.cov(expected, rowvar=False), rtol=1e-10)


def test_a_failed_save_stats_write_is_one_line_and_leaves_no_temporary_file(
    folders, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, *args, **kwargs: _RecordingExtractor()))

  def fill_the_disk(file, **arrays):
    file.write(b'PK half an archive')  # Half a file lies there when the disk fills.
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np, 'savez_compressed', fill_the_disk)
  before = sorted(p.name for p in tmp_path.iterdir())
  status, _, err = _cli([str(folders[0]), f'--save_stats={tmp_path / "s.npz"}'], capsys)
  assert status == EXIT_USER_ERROR and 'Traceback' not in err
  assert err.strip().splitlines()[-1].endswith(
      f'Could not write --save_stats {tmp_path / "s.npz"} (No space left on device); name a '
      'file in a writable folder.')
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ignored_pytorch_fid_flags_are_said(tmp_path, capsys, caplog):
  for name, seed in (('a.npz', 0), ('b.npz', 1)):
    features = np.random.default_rng(seed).normal(size=(5, 2048))
    evaluation.FeatureStatistics().update(features).save(tmp_path / name)
  with caplog.at_level(logging.WARNING):
    status, out, err = _cli([str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz'), '--device',
                             'cuda:1', '--num-workers', '4'], capsys)
  assert status == 0, err
  assert out.strip().splitlines()[-1].startswith('FID: ')
  assert "Ignoring pytorch-fid's --device=cuda:1: JAX picks the accelerator" in caplog.text
  assert "Ignoring pytorch-fid's --num-workers=4" in caplog.text


def test_too_few_readable_images_for_precision_recall_still_print_the_fid(
    folders, tmp_path, capsys, monkeypatch):
  """Counted as files up front there were enough; two were unreadable, so precision/recall
  (k=3) is skipped with the reason, after the FID that was computed."""
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, *args, **kwargs: _RecordingExtractor()))
  sparse = _write_images(tmp_path / 'sparse', 2, seed=5)
  (sparse / 'x.png').write_bytes(b'not an image')
  (sparse / 'y.png').write_bytes(b'not an image either')
  status, out, err = _cli([str(folders[0]), str(sparse), '--precision_recall'], capsys)
  assert status == 0, err
  lines = out.strip().splitlines()
  assert lines[-2].startswith('Precision/recall skipped: ') and 'need more than 3' in lines[-2]
  assert lines[-1].startswith('FID: ') and float(lines[-1][5:]) >= 0


def test_waiting_part_batches_are_bounded_in_memory(tmp_path, monkeypatch):
  """Many sizes, each with a part batch waiting: past the bound the fullest goes through."""
  folder = tmp_path / 'sizes'
  folder.mkdir()
  for i, side in enumerate((8, 9, 10, 8, 11)):
    Image.fromarray(np.full((side, side, 3), 10 * i, np.uint8)).save(folder / f'{i}.png')
  monkeypatch.setattr(fid, '_MAX_PENDING_BYTES', 700)  # Two or three small images.
  extractor = _RecordingExtractor()
  stats, _, _ = fid.image_statistics(str(folder), extractor)
  assert stats.count == 5
  # 8x8 (192 B) + 9x9 (243 B) + 10x10 (300 B) > 700: the 10x10 one went first, alone.
  assert extractor.shapes[0] == (1, 10, 10, 3)
  assert sorted(extractor.shapes[1:]) == [(1, 9, 9, 3), (1, 11, 11, 3), (2, 8, 8, 3)]


def test_a_folder_named_like_a_statistics_file_is_read_as_images(tmp_path, capsys,
                                                                  monkeypatch):
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, *args, **kwargs: _RecordingExtractor()))
  folder = _write_images(tmp_path / 'images.npz', 3, seed=5)  # Was "does not exist".
  status, out, err = _cli([str(folder), f'--save_stats={tmp_path / "s.npz"}'], capsys)
  assert status == 0, err
  assert f'Statistics written to {tmp_path / "s.npz"}' in out
  assert evaluation.FeatureStatistics.load(tmp_path / 's.npz')[0].count == 3


def test_a_statistics_file_without_a_preprocessing_record_is_said_to_be_assumed(tmp_path,
                                                                              caplog):
  """pytorch-fid's (and TTUR's) files record only mu and sigma: scored under the other mode, a
  review's FID was 15% off with no word. Now a warning names the mode taken."""
  from dcgan_jax import evaluate  # pylint: disable=g-import-not-at-top
  bare, recorded = tmp_path / 'theirs.npz', tmp_path / 'ours.npz'
  mu, sigma = np.zeros(2048), np.eye(2048)
  np.savez(bare, mu=mu, sigma=sigma)  # As pytorch-fid's --save-stats writes it.
  np.savez(recorded, mu=mu, sigma=sigma, preprocessing='tf')
  with caplog.at_level(logging.WARNING):
    _, protocol = evaluate.file_reference(str(bare), 'tf')
  assert protocol['preprocessing'] is None
  assert ('theirs.npz does not record the preprocessing its statistics were computed with; it '
          'is taken to be --preprocessing=tf. Files from pytorch-fid') in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _, protocol = evaluate.file_reference(str(recorded), 'tf')
  assert protocol['preprocessing'] == 'tf' and 'does not record' not in caplog.text


def test_statistics_made_in_another_arithmetic_are_warned_about(tmp_path, capsys, caplog):
  """TF32 features against float32 ones: an FID that neither arithmetic alone gives, which
  nothing in the numbers shows. Said, not refused (the shift is small)."""
  for name, seed, arithmetic in (('gpu.npz', 0, 'precision default on gpu'),
                                 ('cpu.npz', 1, 'float32'), ('bare.npz', 2, None)):
    stats = evaluation.FeatureStatistics().update(
        np.random.default_rng(seed).normal(size=(5, 2048)))
    stats.save(tmp_path / name, **({'inception_arithmetic': arithmetic} if arithmetic else {}))
  with caplog.at_level(logging.WARNING):
    status, out, err = _cli([str(tmp_path / 'cpu.npz'), str(tmp_path / 'gpu.npz')], capsys)
  assert status == 0, err
  assert 'FID: ' in out
  assert (f'{tmp_path / "gpu.npz"} was computed with Inception in precision default on gpu, '
          f'{tmp_path / "cpu.npz"} runs it in float32') in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # A file without the record (pytorch-fid's) passes.
    status, _, err = _cli([str(tmp_path / 'cpu.npz'), str(tmp_path / 'bare.npz')], capsys)
  assert status == 0, err
  assert 'computed with Inception in' not in caplog.text
