"""The evaluation program (python -m dcgan_jax.evaluate) on a tiny trained run.

One 8x8 run of 2 steps and random (but well-scaled) Inception weights are shared by the module.
Inception at 299x299 costs about half a second per image on CPU, so the in-process runs score
only 16 generated and 16 reference images; the numbers are meaningless, the plumbing is what is
under test (the metrics themselves are tested in tests/test_evaluation_statistics.py).
"""
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dcgan_jax import evaluate
from dcgan_jax import evaluation
from dcgan_jax import models
from dcgan_jax import run_checks
from dcgan_jax import train
from dcgan_jax import train_hooks
from dcgan_jax.errors import EXIT_USER_ERROR
from dcgan_jax.data import digits
from dcgan_jax.evaluation import weights
from dcgan_jax.evaluation.inception import variable_shapes

from tiny_configs import tiny_config  # pylint: disable=g-bad-import-order

_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM = 2  # Images per side: Inception costs ~0.5 s per image on CPU.


def _random_inception_npz(path, seed=0):
  """Correctly shaped FID Inception weights, He-scaled so activations stay finite."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in weights.expected_torch_shapes().items():
    if name.endswith('running_var'):
      array = np.ones(shape)
    elif name.endswith('running_mean') or name.endswith('bias'):
      array = np.zeros(shape)
    elif name.endswith('bn.weight'):
      array = np.ones(shape)
    else:  # Convolution [O, I, H, W] or fc [1008, 2048] weights.
      fan_in = int(np.prod(shape[1:]))
      array = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    state[name] = array.astype(np.float32)
  weights.save_npz(state, path)
  return path


@pytest.fixture(autouse=True)
def one_device_extractor(monkeypatch):
  """Runs Inception on one device: on 8 (fake) devices every batch would be padded to 8."""
  from_file = evaluation.InceptionExtractor.from_file

  def one_device(cls, path, **kwargs):
    del cls
    return from_file(path, devices=jax.local_devices()[:1], **kwargs)

  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file', classmethod(one_device))


@pytest.fixture(scope='module')
def inception_npz(tmp_path_factory):
  return str(_random_inception_npz(tmp_path_factory.mktemp('weights') / 'inception.npz'))


def _written(out: str) -> pathlib.Path:
  """The result file a run of the program says it wrote (the tests of one run_dir share it,
  and a result under another protocol goes to eval_step_XXXXXX-<n>.json)."""
  return pathlib.Path(re.search(r'Written to (\S+)', out).group(1))


class _Records(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A 2-step run asked for FID every step but given no weights (so FID is skipped)."""
  tmp = tmp_path_factory.mktemp('eval_run')
  config = tiny_config(str(tmp / 'tfds'), num_train_steps=2, checkpoint_every_steps=2,
                       sample_every_steps=0, log_every_steps=1, eval_every_steps=1)
  records = _Records()
  logging.getLogger().addHandler(records)
  try:
    train.train_and_evaluate(config, tmp / 'run')
  finally:
    logging.getLogger().removeHandler(records)
  run = tmp / 'run'
  run.joinpath('train_log.txt').write_text('\n'.join(records.messages))
  return run


def test_training_without_weights_says_fid_is_skipped(run_dir):
  log = run_dir.joinpath('train_log.txt').read_text()
  assert ('FID evaluation skipped: eval_every_steps is 1 but no inception_weights is set' in log
          and '--config.eval_every_steps=0 turns this off' in log)
  assert not (run_dir / train_hooks.BEST_FID_FILE).exists()
  assert not (run_dir / train_hooks.BEST_FID_DIR).exists()


def test_training_keeps_the_best_fid_checkpoint(tmp_path, monkeypatch, caplog):
  # A stand-in extractor (as in test_train.py) whose FID is 1/step: every evaluation improves,
  # so the kept checkpoint must follow the latest evaluated step.
  calls = []

  def fake_extractor(images):
    calls.append(images.shape[0])
    pixels = images.astype(np.float32)
    # Real images (the first call) are all zeros; generated ones are shifted further each time.
    shift = 0.0 if len(calls) == 1 else 1e4 / (len(calls) - 1)
    features = np.concatenate([pixels.mean(axis=(1, 2, 3))[:, None] * 0 + shift,
                               pixels.mean(axis=(2, 3))], axis=1)
    return {'pool': features}

  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: fake_extractor))
  # The period in epochs, as the cifar10, mnist and celeba configs give it: 1.9 batches' worth
  # of images is 2 steps (the log said "FID every -1 steps", the field's value, before).
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=4, checkpoint_every_steps=4,
                       sample_every_steps=0, inception_weights='stand_in.npz',
                       eval_every_steps=-1, eval_every_epochs=1.9 * 16 / digits.NUM_EXAMPLES,
                       eval_num_samples=20)
  with caplog.at_level(logging.INFO):
    final_state = train.train_and_evaluate(config, tmp_path / 'run')
  assert 'FID every 2 steps: 20 generated' in caplog.text
  best = json.loads((tmp_path / 'run' / train_hooks.BEST_FID_FILE).read_text())
  assert best['step'] == 4 and np.isfinite(best['fid'])
  assert best['num_generated'] == 20 and best['num_real'] == 20
  assert best['preprocessing'] == 'pytorch_fid'
  best_dir = tmp_path / 'run' / train_hooks.BEST_FID_DIR
  steps = sorted(p.name for p in (best_dir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == ['4']  # max_to_keep=1: step 2's checkpoint was replaced.
  # The evaluation program reads the best checkpoint like any run directory.
  config = evaluate.load_run_config(best_dir)
  _, variables, step, used_ema = evaluate.load_generator(str(best_dir), config, None, True)
  assert step == 4 and used_ema
  for restored, trained in zip(jax.tree.leaves(variables),
                               jax.tree.leaves(final_state.ema.variables)):
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(trained))
  # The checkpoints deleted, a new run starts afresh in the workdir. The old run's best was
  # kept: every FID of the new run compared with it (here: one it cannot beat), no "best FID
  # so far" was logged and best_fid.json kept naming the old run's weights. Now the old best,
  # its checkpoint and sample grids are set aside (not deleted), and the new run keeps its own.
  run = tmp_path / 'run'
  best['fid'] = 0.0
  (run / train_hooks.BEST_FID_FILE).write_text(json.dumps(best))
  shutil.rmtree(run / 'checkpoints')
  calls.clear()
  caplog.clear()
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=2, checkpoint_every_steps=2,
                       sample_every_steps=0, inception_weights='stand_in.npz',
                       eval_every_steps=2, eval_num_samples=20)
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, run)
  assert 'Step 2: best FID so far' in caplog.text
  assert re.search(r'An earlier run left best_fid\.json, best_fid/, samples/progress\.gif and '
                   r'1 sample grid in the workdir, which this run makes anew: set aside in '
                   r'.*rolled_back_logs', caplog.text)
  new_best = json.loads((run / train_hooks.BEST_FID_FILE).read_text())
  assert new_best['step'] == 2 and new_best['fid'] > 0
  assert sorted(p.name for p in (best_dir / 'checkpoints').iterdir()) == ['2']
  assert sorted(p.name for p in (run / 'samples').iterdir()) == ['progress.gif',
                                                                  'step_000002.png']
  (aside,) = (run / 'rolled_back_logs').iterdir()
  assert json.loads((aside / train_hooks.BEST_FID_FILE).read_text()) == best
  assert [p.name for p in (aside / 'best_fid' / 'checkpoints').iterdir()
          if p.name.isdigit()] == ['4']
  assert sorted(p.name for p in (aside / 'samples').iterdir()) == ['progress.gif',
                                                                    'step_000004.png']


def test_a_resume_sets_an_unreadable_best_fid_json_aside_with_its_checkpoint(tmp_path,
                                                                             monkeypatch,
                                                                             caplog):
  """best_fid.json cut short was read as no best: the resume's first FID replaced the best-FID
  checkpoint, however good it was, without a word."""
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: _MeanPixelExtractor()))
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=2, checkpoint_every_steps=2,
                       sample_every_steps=0, inception_weights='stand_in.npz',
                       eval_every_steps=2, eval_num_samples=16)
  run = tmp_path / 'run'
  train.train_and_evaluate(config, run)
  best_json = run / train_hooks.BEST_FID_FILE
  best_json.write_text(best_json.read_text()[:40])  # Cut short.
  config.num_train_steps = 4
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, run)
  assert re.search(r'best_fid\.json in the workdir cannot be read \(JSONDecodeError: .*\): '
                   r'set aside as it was, with best_fid/, in .*rolled_back_logs.*, and this run '
                   r'starts its best FID and best-FID checkpoint anew\.', caplog.text)
  (aside,) = (run / 'rolled_back_logs').iterdir()
  assert [p.name for p in (aside / 'best_fid' / 'checkpoints').iterdir()
          if p.name.isdigit()] == ['2']  # The earlier best is kept.
  assert json.loads(best_json.read_text())['step'] == 4  # The resume keeps its own.


def test_a_failed_best_fid_save_says_the_runs_own_checkpoints_are_intact(tmp_path,
                                                                          monkeypatch):
  """A best-FID save the disk refused said "(no earlier checkpoint exists)" of best_fid/ alone,
  which read as if the run had lost every checkpoint."""
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: _MeanPixelExtractor()))
  save = checkpointing.Checkpointer.save

  def best_fid_disk_full(self, step, *args, **kwargs):
    if self.directory.parent.name == train_hooks.BEST_FID_DIR:
      raise checkpointing.CheckpointError(
          f'Could not write the checkpoint of step {step} in {self.directory} (No space left on '
          'device); free some disk space or pass a writable --workdir (no earlier checkpoint '
          'exists).')
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpointer, 'save', best_fid_disk_full)
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=2, checkpoint_every_steps=2,
                       sample_every_steps=0, inception_weights='stand_in.npz',
                       eval_every_steps=2, eval_num_samples=16)
  run = tmp_path / 'run'
  with pytest.raises(checkpointing.CheckpointError) as excinfo:
    train.train_and_evaluate(config, run)
  assert str(excinfo.value).endswith(
      "(no earlier checkpoint exists). That was the best-FID checkpoint: the run's own "
      f'checkpoints in {run / "checkpoints"} are intact, and the same command resumes from '
      'step 2.')


def _cli(argv, capsys):
  """Runs the program in-process; returns (exit status, stdout, stderr)."""
  status = 0
  try:
    remaining = evaluate.parse_flags(['evaluate', *argv])
    evaluate.main(remaining)
  except SystemExit as e:
    status = e.code
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.slow  # Compiles Inception at 299x299 and computes two 2048-dim FIDs.
def test_evaluate_writes_json_and_reuses_the_reference_cache(run_dir, inception_npz, capsys,
                                                             monkeypatch):
  args = [f'--workdir={run_dir}', f'--inception_weights={inception_npz}',
          f'--num_samples={NUM}', f'--num_reference={NUM}', '--batch_size=8']
  # k=1 so that NUM features per side are enough for precision/recall (the second call keeps
  # the papers' k=3 and is too small for it).
  monkeypatch.setattr(evaluation.manifold, 'DEFAULT_K', 1)
  status, out, _ = _cli(args, capsys)
  assert status == 0
  result_path = _written(out)
  assert result_path.name.startswith('eval_step_000002')
  result = json.loads(result_path.read_text())
  assert {'step', 'fid', 'inception_score', 'inception_score_std', 'kid', 'kid_std',
          'protocol'} <= set(result)
  assert result['step'] == 2
  assert np.isfinite(result['fid']) and result['fid'] >= 0
  assert np.isfinite(result['inception_score']) and result['inception_score'] >= 1 - 1e-6
  assert np.isfinite(result['kid'])
  protocol = result['protocol']
  assert protocol['num_samples'] == NUM and protocol['used_ema']
  assert protocol['latents'] == evaluate.LATENTS
  assert protocol['preprocessing'] == 'pytorch_fid'
  assert protocol['reference']['num_samples'] == NUM and not protocol['reference']['cached']
  assert protocol['kid']['subset_size'] == NUM
  # As many features on each side as a subset holds: every subset would be the same one.
  assert protocol['kid']['subsets'] == 1 and f'(all {NUM} features of each side, once)' in out
  assert result['kid_std'] is None  # One round has no spread (a 0.0 read as a measured one).
  # Precision/recall/density/coverage on the same features as KID.
  assert all(0.0 <= result[name] <= 1.0 for name in ('precision', 'recall', 'coverage'))
  assert result['density'] >= 0.0
  assert protocol['precision_recall'] == {
      'k': 1, 'features': 'inception pool_3', 'inside': evaluate.MANIFOLD_INSIDE,
      'num_generated_features': NUM, 'num_reference_features': NUM}
  assert f"Precision {result['precision']:.4f}, recall {result['recall']:.4f}" in out
  cache = run_dir / 'fid_reference_digits_8_pytorch_fid.npz'
  assert protocol['reference']['source'] == str(cache) and cache.is_file()
  stats, metadata = evaluation.FeatureStatistics.load(cache)
  assert stats.count == NUM and metadata['kid_features'].shape == (NUM, 2048)
  assert f'{NUM} generated images' in out and 'pytorch_fid' in out and 'FID' in out
  # Splits hold two images at least: one image's IS is exactly 1, whatever G draws.
  assert protocol['inception_score_splits'] == 1 and '(1 split of 2 images)' in out
  assert evaluate._splits_text(10, 50_000) == '10 splits of 5000 images'  # pylint: disable=protected-access
  assert evaluate._splits_text(3, 7) == '3 splits of 2-3 images'  # pylint: disable=protected-access

  # Second call: the dataset is not read again, and the same latents give the same FID.
  def no_data(*args, **kwargs):
    raise AssertionError('the cached reference statistics should have been used')

  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data, 'load_all_images', no_data)
  monkeypatch.setattr(evaluation.manifold, 'DEFAULT_K', 3)
  status, out, _ = _cli(args + ['--step=2', '--no_ema'], capsys)
  assert status == 0
  # Another protocol (G's own weights, k=3): the earlier result is kept beside the new one.
  written_again = _written(out)
  assert written_again != result_path and json.loads(result_path.read_text()) == result
  again = json.loads(written_again.read_text())
  assert again['precision'] is None and 'need more than k=3' in out
  assert again['protocol']['reference']['cached']
  assert not again['protocol']['used_ema']
  # Other weights (trained rather than EMA) give another FID against the same reference.
  assert again['fid'] != result['fid']
  # The result names its network by the weights' digest, as the reference cache does; the same
  # weights from another path are the same protocol (the result is replaced, not added to).
  fingerprint = again['protocol'][evaluate.FINGERPRINT_KEY]
  assert fingerprint and fingerprint == metadata['inception_weights']
  moved = pathlib.Path(inception_npz).parent / 'moved' / 'inception.npz'
  moved.parent.mkdir(exist_ok=True)
  shutil.copyfile(inception_npz, moved)
  status, out, _ = _cli([f'--inception_weights={moved}' if a.startswith('--inception_weights')
                         else a for a in args] + ['--step=2', '--no_ema'], capsys)
  assert status == 0 and _written(out) == written_again


def test_reference_cache_follows_the_files_of_a_folder_dataset(tmp_path):
  """Images replaced under the same dataset_path make a new reference, not the cached one; a
  damaged cache is made again."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'images'
  folder.mkdir()

  def write_images(value, mtime):
    for i in range(6):
      path = folder / f'{i}.png'
      Image.new('RGB', (8, 8), (value, value, value)).save(path)
      os.utime(path, (mtime, mtime))

  write_images(50, 1_700_000_000)
  config = tiny_config(str(tmp_path / 'tfds'), dataset='folder', dataset_path=str(folder),
                       channels=3)
  extractor = _MeanPixelExtractor()  # (Defined below: feature 0 is the mean pixel.)

  def reference():
    stats, _, protocol = evaluate.dataset_reference(str(tmp_path), config, extractor, 6)
    return float(np.asarray(stats.mean)[0]), protocol['cached']

  assert reference() == (pytest.approx(50.0), False)
  assert reference() == (pytest.approx(50.0), True)  # Nothing changed: the cache is used.
  write_images(200, 1_700_000_100)  # The same names and sizes, other pixels.
  assert reference() == (pytest.approx(200.0), False)
  assert reference() == (pytest.approx(200.0), True)
  # A cache cut short (a full disk, a copy interrupted) is made again, not an error forever.
  cache = evaluate.reference_cache_path(tmp_path, config, 'pytorch_fid')
  cache.write_bytes(cache.read_bytes()[:300])
  assert reference() == (pytest.approx(200.0), False)
  assert reference() == (pytest.approx(200.0), True)


def test_reference_file_gives_fid_and_skips_kid(run_dir, inception_npz, tmp_path, capsys):
  # Statistics of random features stand in for a pytorch-fid --save-stats file.
  rng = np.random.default_rng(1)
  stats_path = tmp_path / 'stats.npz'
  evaluation.FeatureStatistics().update(rng.normal(size=(40, 2048))).save(stats_path)
  status, out, _ = _cli([f'--workdir={run_dir}', f'--inception_weights={inception_npz}',
                         f'--num_samples={NUM}', '--batch_size=8', f'--reference={stats_path}'],
                        capsys)
  assert status == 0
  result = json.loads(_written(out).read_text())
  assert np.isfinite(result['fid']) and result['fid'] > 0
  assert result['kid'] is None and 'statistics only' in result['protocol']['kid']['skipped']
  assert result['protocol']['reference']['source'] == str(stats_path)
  assert 'KID skipped' in out
  assert all(result[name] is None for name in ('precision', 'recall', 'density', 'coverage'))
  assert 'statistics only' in result['protocol']['precision_recall']['skipped']
  assert 'Precision/recall skipped' in out
  # A file that records another Inception network is refused before anything is generated.
  other = tmp_path / 'other_weights.npz'
  evaluation.FeatureStatistics().update(rng.normal(size=(40, 2048))).save(
      other, inception_weights='0123456789abcdef')
  status, _, err = _cli([f'--workdir={run_dir}', f'--inception_weights={inception_npz}',
                         f'--num_samples={NUM}', '--batch_size=8', f'--reference={other}'], capsys)
  assert status == EXIT_USER_ERROR
  assert (f'{other} was computed with other Inception weights (fingerprint 0123456789abcdef) '
          "than this evaluation's --inception_weights") in err


def test_reference_file_with_features_gives_kid_and_precision_recall(run_dir, inception_npz,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
  """A statistics file that also holds per-image features (fid --save_stats
  --precision_recall) serves KID and precision/recall, not only FID."""
  rng = np.random.default_rng(2)
  features = rng.normal(size=(40, 2048)).astype(np.float32)
  stats_path = tmp_path / 'stats_with_features.npz'
  evaluation.FeatureStatistics().update(features).save(stats_path, kid_features=features)
  monkeypatch.setattr(evaluation.manifold, 'DEFAULT_K', 1)  # NUM generated images suffice.
  status, out, _ = _cli([f'--workdir={run_dir}', f'--inception_weights={inception_npz}',
                         f'--num_samples={NUM}', '--batch_size=8', f'--reference={stats_path}'],
                        capsys)
  assert status == 0
  result = json.loads(_written(out).read_text())
  assert np.isfinite(result['fid']) and np.isfinite(result['kid'])
  assert result['protocol']['kid']['num_reference_features'] == 40
  assert result['protocol']['kid']['subsets'] == evaluate.KID_SUBSETS  # 40 to draw from.
  assert result['protocol']['reference']['num_features'] == 40
  assert 'features' not in result['protocol']['reference']  # Counted, not copied.
  assert 0.0 <= result['precision'] <= 1.0 and 0.0 <= result['recall'] <= 1.0
  assert result['protocol']['precision_recall']['num_reference_features'] == 40
  assert 'KID skipped' not in out and 'Precision ' in out


@pytest.mark.parametrize('case,message', [
    ('missing_workdir', 'does not exist'),
    ('no_checkpoint', 'no run config'),
    ('missing_weights', 'Inception weights not found'),
    ('bad_reference', 'not a statistics file'),
    ('missing_reference', 'reference statistics file'),
    ('folder_reference', 'is a folder of images, not a statistics file; make statistics with '
                         '`python -m dcgan_jax.fid'),
    ('other_preprocessing', 'was computed with preprocessing=tf, but --preprocessing is '
                            'pytorch_fid'),
    ('negative_num_reference', '--num_reference must be at least 2 (got -5)'),
    ('bad_step', 'no checkpoint of step 7'),
    ('nan_weights', "generator's EMA weights at step 2 in "),
])
def test_user_mistakes_are_one_line(case, message, run_dir, inception_npz, tmp_path, capsys,
                                    monkeypatch):
  args = {'workdir': str(run_dir), 'inception_weights': inception_npz, 'num_samples': str(NUM)}
  if case == 'missing_workdir':
    args['workdir'] = str(tmp_path / 'nope')
  elif case == 'no_checkpoint':
    args['workdir'] = str(tmp_path)
  elif case == 'missing_weights':
    args['inception_weights'] = str(tmp_path / 'missing.pth')
  elif case == 'bad_reference':
    bad = tmp_path / 'bad.npz'
    np.savez(bad, something=np.zeros(3))
    args['reference'] = str(bad)
  elif case == 'missing_reference':
    args['reference'] = str(tmp_path / 'missing.npz')
  elif case == 'folder_reference':
    (tmp_path / 'real').mkdir()
    args['reference'] = str(tmp_path / 'real')
  elif case == 'other_preprocessing':  # Was a warning, and FID/KID went on to be reported.
    other = tmp_path / 'tf_stats.npz'
    evaluation.FeatureStatistics().update(np.eye(3, 2048)).save(other, preprocessing='tf')
    args['reference'] = str(other)
  elif case == 'negative_num_reference':  # Sliced the dataset from its end, or a traceback.
    args['num_reference'] = '-5'
  elif case == 'bad_step':
    args['step'] = '7'
  elif case == 'nan_weights':  # A checkpoint whose G diverged (training never saves one).
    from dcgan_jax import state as state_lib  # pylint: disable=g-import-not-at-top
    variables = state_lib.GANState.sampling_variables
    monkeypatch.setattr(state_lib.GANState, 'sampling_variables', lambda self, use_ema=True: (
        jax.tree.map(lambda x: np.full(np.shape(x), np.nan, np.float32),
                     variables(self, use_ema))))
    message += f'{run_dir} are not finite (NaN or infinite); evaluate an earlier step (--step)'
  status, out, err = _cli([f'--{k}={v}' for k, v in args.items()], capsys)
  assert status == EXIT_USER_ERROR
  assert message.lower() in err.lower()
  assert 'Traceback' not in err and out == ''


def test_subprocess_error_is_one_line_exit_2(tmp_path, inception_npz):
  env = dict(os.environ, PYTHONPATH=str(_ROOT))
  proc = subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.evaluate', f'--workdir={tmp_path / "missing"}',
       f'--inception_weights={inception_npz}'],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == EXIT_USER_ERROR
  assert proc.stderr.strip().splitlines()[-1].startswith('The workdir ')
  assert 'does not exist' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.slow  # Compiles Inception at 299x299.
def test_evaluate_one_class_of_a_conditional_run(tmp_path, inception_npz, capsys):
  """--label scores one class against the dataset's images of that class (intra-class FID)."""
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=1, checkpoint_every_steps=1,
                       sample_every_steps=0, num_classes=10)
  run = tmp_path / 'run'
  train.train_and_evaluate(config, run)
  args = [f'--workdir={run}', f'--inception_weights={inception_npz}', f'--num_samples={NUM}',
          f'--num_reference={NUM}', '--batch_size=8']
  status, out, _ = _cli(args + ['--label=3'], capsys)
  assert status == 0, out
  result = json.loads((run / 'eval_step_000001_class3.json').read_text())
  assert result['protocol']['label'] == 3 and result['protocol']['num_classes'] == 10
  assert f'{NUM} generated images of class 3' in out
  cache = run / 'fid_reference_digits_8_pytorch_fid_class3.npz'
  assert result['protocol']['reference']['source'] == str(cache)
  assert evaluation.FeatureStatistics.load(cache)[0].count == NUM
  # A label the run does not have is one clear line.
  status, _, err = _cli(args + ['--label=10'], capsys)
  assert status == EXIT_USER_ERROR and '--label must be a class in 0..9 (got 10)' in err


class _PixelFeatures:
  """A stand-in extractor: each image's mean pixel, repeated to 2048 'features'."""
  preprocessing = 'pytorch_fid'

  def device_batches(self, images):
    means = np.asarray(images, np.float32).mean(axis=(1, 2, 3))
    yield {'pool': np.repeat(means[:, None], 2048, axis=1)}


def test_class_reference_holds_that_class_alone(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), num_classes=10)
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  images, labels = data.load_all_images(config, with_labels=True)
  for label in (0, 1):
    stats, _, protocol = evaluate.dataset_reference(str(tmp_path), config, _PixelFeatures(),
                                                    num_reference=50, label=label)
    wanted = images[labels == label][:50].astype(np.float32).mean(axis=(1, 2, 3))
    assert stats.count == 50 and protocol['label'] == label
    np.testing.assert_allclose(stats.mean[0], wanted.mean(), rtol=1e-5)
  assert not np.isclose(wanted.mean(), images[labels == 0][:50].mean())  # Classes differ.
  # The whole dataset's cache keeps the keys it always had (no 'label').
  _, _, protocol = evaluate.dataset_reference(str(tmp_path), config, _PixelFeatures(),
                                              num_reference=50)
  assert 'label' not in protocol


class _MeanPixelExtractor:
  """A stand-in Inception: features are each image's mean pixel and its row means (no compile);
  logits are the row means, for the Inception Score."""
  preprocessing = 'pytorch_fid'
  precision = 'default'

  def device_batches(self, images):
    pixels = np.asarray(images, np.float32)
    rows = pixels.mean(axis=(2, 3))
    yield {'pool': np.concatenate([pixels.mean(axis=(1, 2, 3))[:, None], rows], axis=1),
           'logits': rows / 64.0}


def test_intra_fid_is_the_mean_of_the_per_class_fids(tmp_path, monkeypatch, capsys):
  config = tiny_config(str(tmp_path / 'tfds'), num_train_steps=1, checkpoint_every_steps=1,
                       sample_every_steps=0, num_classes=10)
  run = tmp_path / 'run'
  train.train_and_evaluate(config, run)
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: _MeanPixelExtractor()))
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  reads = []
  load_all_images = data.load_all_images

  def counted(*args, **kwargs):
    reads.append(kwargs)
    return load_all_images(*args, **kwargs)

  monkeypatch.setattr(data, 'load_all_images', counted)
  args = [f'--workdir={run}', '--inception_weights=unused.npz', '--num_samples=24',
          '--num_reference=40', '--batch_size=8']
  status, out, err = _cli(args + ['--intra_fid'], capsys)
  assert status == 0, err
  summary = json.loads((run / 'eval_step_000001_intra.json').read_text())
  assert [c['label'] for c in summary['classes']] == list(range(10))
  fids = [c['fid'] for c in summary['classes']]
  assert summary['intra_fid'] == pytest.approx(np.mean(fids)) and len(set(fids)) == 10
  assert summary['protocol']['num_samples_per_class'] == 24
  assert all(c['num_reference'] == 40 for c in summary['classes'])  # Digits: ~180 per class.
  assert len(reads) == 1  # One read of the dataset for the ten class references.
  assert 'intra-FID' in out and out.count('  class ') == 10
  # Each class is exactly what --label gives, from the per-class caches (no read at all).
  one = evaluate.evaluate(str(run), 'unused.npz', num_samples=24, num_reference=40,
                          batch_size=8, label=7)
  assert one['fid'] == pytest.approx(fids[7]) and len(reads) == 1
  assert json.loads(pathlib.Path(one['path']).read_text())['fid'] == one['fid']
  # Mistakes: one line each.
  status, _, err = _cli(args + ['--intra_fid', '--label=3'], capsys)
  assert status == EXIT_USER_ERROR and 'cannot be combined with --label' in err
  plain = tmp_path / 'plain'
  train.train_and_evaluate(tiny_config(str(tmp_path / 'tfds'), num_train_steps=1,
                                       checkpoint_every_steps=1, sample_every_steps=0), plain)
  status, _, err = _cli([f'--workdir={plain}', '--intra_fid'], capsys)
  assert status == EXIT_USER_ERROR and 'trained without labels' in err
  assert len(err.strip().splitlines()) == 1


def _one_device_generation(generator, variables, num, seed, value_range, label):
  """What evaluate generated before it used every device: image j from normal(fold_in(key(seed),
  j)) and class j mod num_classes (or ``label``), all of them in one program on one device."""
  num_classes = generator.num_classes
  device = jax.local_devices()[0]

  @jax.jit
  def images(variables):
    index = jax.numpy.arange(num)
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(jax.random.key(seed), i),
                                             (generator.latent_dim,)))(index)
    labels = None
    if num_classes:
      labels = index % num_classes if label is None else jax.numpy.full((num,), label)
    out = generator.apply(variables, z, train=False, **models.label_kwargs(labels))
    return out if value_range is None else evaluation.to_uint8_jax(out, *value_range)

  return np.asarray(images(jax.device_put(variables, device)))


@pytest.mark.parametrize('num_classes', [0, 10])
def test_generation_over_every_device_is_the_one_device_generation(num_classes):
  """evaluate's images split over 8 (or 3) devices are one device's, bit for bit: float32 and
  uint8, counts that are no multiple of the batch or of the devices, any batch size (rounded
  up to a multiple of the devices), the classes in turn or one ``label``; every whole batch is
  split over the devices as an extractor over them takes its batches of that size."""
  assert jax.local_device_count() == 8  # tests/conftest.py's fake CPU devices.
  generator = models.Generator(image_size=8, channels=1, latent_dim=8, width=8,
                               num_classes=num_classes)
  variables = generator.init(jax.random.key(0), np.zeros((1, 8), np.float32), train=False,
                             **models.label_kwargs(models.cycled_labels(1, num_classes)))
  zero_inception = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes())
  for value_range, label, num, batch_size, num_devices in [
      (None, None, 13, 5, 8), ((-1.0, 1.0), None, 13, 5, 8), (None, None, 45, 16, 3),
      ((-1.0, 1.0), 3 if num_classes else None, 21, 200, 8), ((-1.0, 1.0), None, 3, 8, 8)]:
    devices = jax.local_devices()[:num_devices]
    message = f'{num} images over {num_devices} devices in batches of {batch_size}'
    batches = list(evaluate.generate(generator, variables, num, 8, batch_size, seed=3,
                                     value_range=value_range, label=label, devices=devices))
    expected = _one_device_generation(generator, variables, num, 3, value_range, label)
    np.testing.assert_array_equal(np.concatenate(jax.device_get(batches)), expected,
                                  err_msg=message)
    rows = -(-batch_size // num_devices) * num_devices
    assert [b.shape[0] for b in batches] == [min(rows, num - s) for s in range(0, num, rows)]
    extractor = evaluation.InceptionExtractor(zero_inception, batch_size=batch_size,
                                              devices=devices)
    assert extractor.batch_size == rows
    for batch in batches:
      if batch.shape[0] == rows:  # Nothing to move before Inception.
        # pylint: disable-next=protected-access
        assert batch.sharding == extractor._data_sharding, message
        assert len(batch.addressable_shards) == num_devices
  # One program per generator, batch shape and devices, whatever the seed or the label.
  evaluate._sampler.cache_clear()  # pylint: disable=protected-access
  labels = [0, 9] if num_classes else [None, None]
  for seed, label in zip((0, 1), labels):
    list(evaluate.generate(generator, variables, 16, 8, 8, seed=seed, label=label))
  assert evaluate._sampler.cache_info().misses == 1  # pylint: disable=protected-access


def test_evaluate_generates_on_the_extractors_devices(run_dir, tmp_path, monkeypatch):
  """The evaluation generates on the extractor's devices in its batch size: every whole batch
  reaches it split as it takes its batches (no gather to one device and back), and the images
  are those of one device."""
  devices = jax.local_devices()[:4]
  zero_inception = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes())
  extractor = evaluation.InceptionExtractor(zero_inception, batch_size=5, devices=devices)
  generated = []

  def mean_pixel_features(images):  # Records what it is given; runs no network.
    if isinstance(images, jax.Array):
      generated.append(images)
    yield from _MeanPixelExtractor().device_batches(images)

  monkeypatch.setattr(extractor, 'device_batches', mean_pixel_features)
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: extractor))
  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  result = evaluate.evaluate(str(run), 'unused.npz', num_samples=13, num_reference=16,
                             batch_size=5)
  assert np.isfinite(result['fid'])
  assert [images.shape[0] for images in generated] == [8, 5]  # 5 rounded up to 4 devices.
  # pylint: disable-next=protected-access
  assert generated[0].sharding == extractor._data_sharding
  config = evaluate.load_run_config(str(run))
  generator, variables, _, _ = evaluate.load_generator(str(run), config, None, True)
  value_range = models.output_range(config.output_activation)
  np.testing.assert_array_equal(
      np.concatenate(jax.device_get(generated)),
      _one_device_generation(generator, variables, 13, 0, value_range, None))


class _CheapExtractor:
  """Features are per-image channel means (no network): enough to tell references apart."""
  preprocessing = 'pytorch_fid'

  def __init__(self, precision='default', weights_fingerprint='weights-a'):
    self.precision, self.weights_fingerprint = precision, weights_fingerprint

  def device_batches(self, images):
    pixels = np.asarray(images, np.float64)
    yield {'pool': np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))], axis=1)}


def test_cached_reference_is_remade_when_anything_that_made_it_changes(tmp_path, monkeypatch):
  """The extractor's weights or precision, or the images' source or crop, change the reference
  statistics: a cache made otherwise must not be reused (as it once silently was)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top

  reads = []

  def load_all_images(config, max_examples=None):
    reads.append(config.dataset_path)
    seed = len(config.dataset_path) + int(config.crop_size)  # Other source or crop: other pixels.
    return np.random.default_rng(seed).integers(0, 256, (6, 8, 8, 1), np.uint8)

  monkeypatch.setattr(data, 'load_all_images', load_all_images)
  config = ml_collections.ConfigDict(dict(dataset='folder', dataset_path='faces', split='train',
                                          image_size=8, channels=1, crop_size=0, data_dir=''))

  def reference(extractor=None, **changes):
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.update(changes)
    stats, _, protocol = evaluate.dataset_reference(
        str(tmp_path), run_config, extractor or _CheapExtractor(), num_reference=6)
    return stats.mean, protocol['cached']

  first, cached = reference()
  assert not cached and len(reads) == 1
  again, cached = reference()
  assert cached and len(reads) == 1
  np.testing.assert_array_equal(again, first)
  for extractor, changes in ((_CheapExtractor(precision='highest'), {}),
                             (_CheapExtractor(weights_fingerprint='weights-b'), {}),
                             (None, {'dataset_path': 'other_faces'}),
                             (None, {'crop_size': 6})):
    count = len(reads)
    _, cached = reference(extractor, **changes)
    assert not cached and len(reads) == count + 1, (extractor, changes)
    _, cached = reference(extractor, **changes)  # Now cached with these settings.
    assert cached and len(reads) == count + 1
  # Back to the first settings: recomputed (one cache file per dataset and size), same numbers.
  back, cached = reference()
  assert not cached
  np.testing.assert_array_equal(back, first)


def test_a_full_disk_keeps_the_scores_in_the_one_line(run_dir, monkeypatch, capsys, caplog):
  """A full disk ended the evaluation with a traceback: at the reference cache (which only
  saves time: now a warning) or at the result file, whose scores (hours of work on a CPU)
  were lost; the one line now gives them."""
  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: _MeanPixelExtractor()))

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(evaluation.FeatureStatistics, 'save', full_disk)
  monkeypatch.setattr(pathlib.Path, 'write_text', full_disk)
  before = sorted(os.listdir(run_dir))
  with caplog.at_level(logging.WARNING):
    status, _, err = _cli([f'--workdir={run_dir}', '--inception_weights=unused.npz',
                           '--num_samples=8', '--num_reference=8'], capsys)
  assert status == EXIT_USER_ERROR and 'Traceback' not in err
  line = err.strip().splitlines()[-1]
  # (-<n>: the module's run holds results of the other tests, under other protocols.)
  assert re.fullmatch(
      re.escape(f'Could not write {run_dir}{os.sep}eval_step_000002') + r'(-\d+)?' + re.escape(
          '.json (No space left on device); free some disk space (or raise the quota or '
          'file-size limit) and run again. The scores of step 2, which are not saved: fid ')
      + r'\S+, inception_score \S+, kid \S+, precision \S+, recall \S+, density \S+, '
      r'coverage \S+\.', line), line
  assert 'Could not cache the reference statistics in' in caplog.text
  assert sorted(os.listdir(run_dir)) == before  # Nothing half-written left behind.


def test_the_fid_skipped_warning_names_the_field_the_config_set():
  """The cifar10, mnist and celeba configs set eval_every_epochs (eval_every_steps=-1): the
  warning named eval_every_steps and a step count the user never wrote."""
  config = train.load_config('configs/cifar10.py')
  text = run_checks.fid_skipped_warning(config, 1124)
  assert 'eval_every_epochs is 10 but' in text and '--config.eval_every_epochs=0' in text
  assert '1124' not in text


def test_a_result_under_another_protocol_is_kept(tmp_path, caplog):
  protocol = {'num_samples': 100, 'used_ema': True,
              'reference': {'source': 'cache.npz', 'cached': False}}
  first = evaluate.result_path(str(tmp_path), 'eval_step_000004', protocol)
  assert first == tmp_path / 'eval_step_000004.json'
  first.write_text(json.dumps({'fid': 1.0, 'protocol': protocol}))
  # The same protocol (the reference now from the cache): the result is replaced.
  cached = {**protocol, 'reference': {'source': 'cache.npz', 'cached': True}}
  assert evaluate.result_path(str(tmp_path), 'eval_step_000004', cached) == first
  # Another protocol goes beside it, and says why; a third finds its own file again.
  with caplog.at_level(logging.WARNING):
    other = evaluate.result_path(str(tmp_path), 'eval_step_000004',
                                 {**protocol, 'used_ema': False})
  assert other == tmp_path / 'eval_step_000004-2.json'
  assert ('eval_step_000004.json holds a result under another protocol (differing: used_ema); '
          'it is kept, and this one goes to eval_step_000004-2.json.') in caplog.text
  other.write_text(json.dumps({'fid': 2.0, 'protocol': {**protocol, 'used_ema': False}}))
  assert evaluate.result_path(str(tmp_path), 'eval_step_000004',
                              {**protocol, 'used_ema': False}) == other
  assert evaluate.result_path(str(tmp_path), 'eval_step_000004',
                              {**protocol, 'num_samples': 5}) == tmp_path / 'eval_step_000004-3.json'
  # A result of a version that drew the latents per batch (no 'latents' field): the same flags
  # gave other images and another FID, said as another protocol.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    newer = evaluate.result_path(str(tmp_path), 'eval_step_000004',
                                 {**protocol, 'latents': evaluate.LATENTS})
  assert newer == tmp_path / 'eval_step_000004-3.json' and '(differing: latents)' in caplog.text


def test_a_result_from_before_a_protocol_field_is_kept_and_the_difference_named(tmp_path,
                                                                               caplog):
  """An older result lacks the weights' digest: it is kept, and the warning names the digest,
  not the weights path (the same); a field at None counts as absent."""
  old = {'num_samples': 10, 'inception_weights': '/w.npz', 'label': None}
  (tmp_path / 'eval_step_000001.json').write_text(json.dumps({'protocol': old}))
  new = {**old, evaluate.FINGERPRINT_KEY: 'abcd'}
  with caplog.at_level(logging.WARNING):
    path = evaluate.result_path(str(tmp_path), 'eval_step_000001', new)
  assert path.name == 'eval_step_000001-2.json'
  assert 'differing: inception_weights_fingerprint);' in caplog.text
  # No digest recorded (None): the same protocol as the older result, whose file is reused.
  assert evaluate.result_path(str(tmp_path), 'eval_step_000001',
                              {**old, evaluate.FINGERPRINT_KEY: None}).name == (
                                  'eval_step_000001.json')
  # With digests on both sides, the weights' path is not part of the protocol.
  (tmp_path / 'eval_step_000002.json').write_text(json.dumps({'protocol': new}))
  assert evaluate.result_path(str(tmp_path), 'eval_step_000002',
                              {**new, 'inception_weights': '/elsewhere/w.npz'}).name == (
                                  'eval_step_000002.json')
