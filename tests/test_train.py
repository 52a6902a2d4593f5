"""End-to-end tests of dcgan_jax.train: outputs, exact resume, corrupt checkpoints, NaN stops.

Every run uses a tiny variant of the default config (8x8 images, width 8) so that a run costs a
few seconds; the 8 fake CPU devices of conftest make each run data parallel.
"""
import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import augment
from dcgan_jax import parallel
from dcgan_jax import preemption
from dcgan_jax import run_checks
from dcgan_jax import run_logs
from dcgan_jax import train
from dcgan_jax import train_hooks
from dcgan_jax import train_metrics
from dcgan_jax import write_errors
from dcgan_jax.errors import UserError
from tiny_configs import load_config, tiny_config

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Orbax's failed reads of a damaged checkpoint leave asyncio tasks that complain later.
_ORBAX_READ_NOISE = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def cache_home(tmp_path_factory):
  """An XDG_CACHE_HOME for the module's runs."""
  return tmp_path_factory.mktemp('cache_home')


def _tree_leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _event_tags(workdir):
  """Tags of all scalars and images in the TensorBoard event files under ``workdir``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = sorted(pathlib.Path(workdir).glob('events.out.tfevents*'))
  tags = set()
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.add(value.tag)
  return files, tags


def _checkpoint_steps(workdir):
  directory = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


# ---- configs --------------------------------------------------------------------------------


def test_load_config_applies_overrides_and_rejects_mistakes(tmp_path):
  config = load_config('mnist', num_train_steps=7, loss='hinge')
  assert (config.num_train_steps, config.loss, config.dataset) == (7, 'hinge', 'mnist')
  with pytest.raises(UserError, match="Unknown config field 'batch_sise'"):
    load_config(batch_sise=3)
  with pytest.raises(UserError, match="config.num_train_steps cannot be set to 'many'"):
    load_config(num_train_steps='many')
  with pytest.raises(UserError, match="No config file at .*nope.py"):
    load_config('nope')
  for field in ('generator_width', 'discriminator_width'):  # Named: the modules say "width".
    with pytest.raises(UserError, match=f'{field} must be a positive integer such as 64, at '
                                        r'most 8,192 \(got 0\)'):
      run_checks.validate_config(load_config(**{field: 0}))
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config():\n  return undefined_name\n')
  with pytest.raises(UserError, match="Cannot load the config file .*NameError"):
    train.load_config(broken)
  # Locked, as the CLI's config: a misspelt field set afterwards raises instead of being
  # carried along unread; existing fields change, and new ones can be added on purpose.
  config.num_train_steps = 9
  with pytest.raises(AttributeError, match='"num_train_step" does not exist'):
    config.num_train_step = 1000
  with config.unlocked():
    config.my_note = 'mine'
  assert (config.num_train_steps, config.my_note) == (9, 'mine')


def test_read_scalars_needs_a_run(tmp_path):
  with pytest.raises(UserError, match='No run directory'):
    run_logs.read_scalars(tmp_path / 'missing')
  with pytest.raises(UserError, match='holds no TensorBoard event files'):
    run_logs.read_scalars(tmp_path)


def test_read_scalars_reads_an_event_file_cut_short(tmp_path, caplog):
  """A run killed while TensorBoard wrote (or one still writing) leaves a cut record."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in range(1, 6):
      tf.summary.scalar('d_loss', step / 8, step=step)
  writer.close()
  (path,) = tmp_path.glob('events.out.tfevents*')
  np.testing.assert_array_equal(run_logs.read_scalars(tmp_path)['d_loss'][0], [1, 2, 3, 4, 5])
  with open(path, 'r+b') as f:
    f.truncate(path.stat().st_size - 7)  # Into the last record.
  with caplog.at_level('WARNING'):
    steps, values = run_logs.read_scalars(tmp_path)['d_loss']
  np.testing.assert_array_equal(steps, [1, 2, 3, 4])
  np.testing.assert_array_equal(values, [0.125, 0.25, 0.375, 0.5])
  assert 'cut short' in caplog.text


def test_logs_after_the_resumed_step_are_set_aside_not_shown_twice(tmp_path):
  """A run killed between checkpoints logged steps its resume trains again (a second point at
  each of them in TensorBoard); they are moved out of the run's files, never deleted."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    tf.summary.text('hparams', 'kept', step=0)
    for step in range(1, 8):
      tf.summary.scalar('d_loss', step / 8, step=step)
  writer.close()
  (events,) = tmp_path.glob('events.out.tfevents*')
  jsonl = tmp_path / run_logs.METRICS_JSONL
  jsonl.write_text(''.join(f'{{"step": {s}, "g_loss": {s}}}\n' for s in range(1, 8))
                   + '{"step": 8, "g_lo', encoding='utf-8')  # Cut short by the kill.
  before = events.read_bytes(), jsonl.read_text(encoding='utf-8')

  assert run_logs.set_aside_logs_after(tmp_path, 4) == [5, 6, 7]  # Steps, each once.
  # The resume's warning counts steps: "14 records" once meant one step's 14 scalars.
  assert [run_logs.describe_steps(s) for s in ([15], [15, 20], [5, 6, 7])] == [
      'step 15', 'steps 15 and 20', '3 steps (5 to 7)']
  scalars = run_logs.read_scalars(tmp_path)
  np.testing.assert_array_equal(scalars['d_loss'][0], [1, 2, 3, 4])
  np.testing.assert_array_equal(scalars['g_loss'][0], [1, 2, 3, 4])
  assert jsonl.read_text(encoding='utf-8').endswith('"g_loss": 4}\n')
  tags = {v.tag for e in run_logs._events(events) for v in e.summary.value}  # pylint: disable=protected-access
  assert tags == {'hparams', 'd_loss'}  # Step 0's record stays.
  # The files as they were, byte for byte, and no stray file the reader would pick up.
  (aside,) = (tmp_path / run_logs.ROLLED_BACK_DIR).iterdir()
  set_aside_events = aside / run_logs.set_aside_name(events.name)
  assert (set_aside_events.read_bytes(), (aside / jsonl.name).read_text()) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [events.name, jsonl.name, run_logs.ROLLED_BACK_DIR])
  # TensorBoard loads every file with 'tfevents' in its name under its logdir: the set-aside
  # copy showed as a second run, each rolled-back step twice. It holds none now, and reading
  # the folder gives the points as they were.
  assert [p for p in tmp_path.rglob('*') if 'tfevents' in p.name] == [events]
  rolled_back = run_logs.read_scalars(aside)
  np.testing.assert_array_equal(rolled_back['d_loss'][0], np.arange(1, 8))
  np.testing.assert_array_equal(rolled_back['g_loss'][0], np.arange(1, 8))
  # Renamed back, it is an ordinary event file again.
  (tmp_path / 'copy').mkdir()
  shutil.copy(set_aside_events, tmp_path / 'copy' / events.name)
  np.testing.assert_array_equal(run_logs.read_scalars(tmp_path / 'copy')['d_loss'][0],
                                np.arange(1, 8))
  shutil.rmtree(tmp_path / 'copy')
  # Nothing after the step: nothing changes.
  assert run_logs.set_aside_logs_after(tmp_path, 4) == []
  assert len(list((tmp_path / run_logs.ROLLED_BACK_DIR).iterdir())) == 1
  # A run started again from scratch (-1: killed before its first checkpoint): every record,
  # step 0's too, and no file is left behind empty.
  assert run_logs.set_aside_logs_after(tmp_path, -1) == [0, 1, 2, 3, 4]
  assert [p.name for p in tmp_path.iterdir()] == [run_logs.ROLLED_BACK_DIR]
  assert len(list((tmp_path / run_logs.ROLLED_BACK_DIR).iterdir())) == 2
  assert not [p for p in tmp_path.rglob('*') if 'tfevents' in p.name]
  # Files an earlier version set aside under their own names are renamed at the next resume.
  shutil.copy(set_aside_events, aside / events.name)
  run_logs.set_aside_logs_after(tmp_path, 4)
  assert not [p for p in tmp_path.rglob('*') if 'tfevents' in p.name]


def test_celeba_config_has_the_paper_model():
  from dcgan_jax import models  # pylint: disable=g-import-not-at-top

  config = load_config('celeba')
  assert (config.image_size, config.channels, config.batch_size) == (64, 3, 128)
  assert (config.g_learning_rate, config.adam_b1) == (2e-4, 0.5)
  state = jax.eval_shape(lambda key: train.create_train_state(config, key, 10),
                         jax.random.key(0))
  assert models.count_params(state.generator.params) == 3_576_704
  assert models.count_params(state.discriminator.params) == 2_765_568


# ---- end to end -----------------------------------------------------------------------------


def _assert_run_outputs(workdir, steps, image_shape):
  """Checkpoints, TensorBoard events (scalars and images), sample grids and config.json."""
  workdir = pathlib.Path(workdir)
  assert _checkpoint_steps(workdir) == steps
  files, tags = _event_tags(workdir)
  assert files, 'no TensorBoard event file'
  for tag in ('d_loss', 'g_loss', 'd_real', 'd_fake_before', 'd_fake_after', 'd_grad_norm',
              'g_grad_norm', 'g_learning_rate', 'd_learning_rate', 'img_per_sec', 'eta_seconds',
              'steps_per_sec', 'samples'):
    assert tag in tags, f'{tag} missing from the TensorBoard events ({sorted(tags)})'
  for step in steps:
    png = workdir / 'samples' / f'step_{step:06d}.png'
    assert png.is_file()
    with Image.open(png) as image:
      # 6 samples of image_shape in a 3x2 grid with 2-pixel padding.
      assert image.size == (3 * (image_shape[1] + 2) + 2, 2 * (image_shape[0] + 2) + 2)
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['image_size'] == image_shape[0]
  # The same scalars read back as numpy for plots: one point per log_every_steps.
  scalars = run_logs.read_scalars(workdir)
  assert 'samples' not in scalars  # Images are not scalars.
  logged = list(range(2, steps[-1] + 1, 2))
  for tag in ('d_loss', 'g_loss', 'd_real'):
    np.testing.assert_array_equal(scalars[tag][0], logged)
    assert np.all(np.isfinite(scalars[tag][1]))
  assert np.all((scalars['d_real'][1] > 0) & (scalars['d_real'][1] < 1))  # Mean of a sigmoid.


@pytest.mark.filterwarnings('ignore:Digits classifier reached only')
def _counting(function, calls):
  """``function``, appending its arguments to ``calls`` at every call."""
  def counted(*args, **kwargs):
    calls.append(args)
    return function(*args, **kwargs)
  return counted


def test_digits_run_leaves_checkpoints_events_samples_and_quality(tfds_dir, tmp_path,
                                                                   monkeypatch, caplog):
  from dcgan_jax import quality  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  # The loop's plumbing is under test here, not the scorer (tests/test_quality.py): an untrained
  # classifier saves the seconds of training one. The slow test below uses the real one.
  def untrained_classifier():
    variables = quality.DigitClassifier().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    return jax.tree.map(np.asarray, variables['params'])

  monkeypatch.setattr(quality, 'train_classifier', untrained_classifier)

  # Likewise an Inception stand-in (per-image mean and row means): the FID hook's plumbing
  # (real statistics, uint8 quantisation, Fréchet distance, logging) is what runs here.
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  extracted_shapes = []

  def fake_extractor(images):
    extracted_shapes.append(images.shape)
    assert images.dtype == np.uint8
    pixels = images.astype(np.float32)
    return {'pool': np.concatenate([pixels.mean(axis=(1, 2, 3))[:, None],
                                    pixels.mean(axis=(2, 3))], axis=1)}

  monkeypatch.setattr(evaluation.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kwargs: fake_extractor))
  # What reaches the writer, its flushes and the checkpoint saves, in order.
  from dcgan_jax import checkpointing, writers  # pylint: disable=g-import-not-at-top
  events = []
  create_writer, save = writers.create_writer, checkpointing.Checkpointer.save

  class RecordingWriter:

    def __init__(self, inner):
      self._inner = inner

    def write_scalars(self, step, scalars):
      events.append(('write', step, sorted(scalars)))
      self._inner.write_scalars(step, scalars)

    def flush(self):
      events.append(('flush',))
      self._inner.flush()

    def __getattr__(self, name):
      return getattr(self._inner, name)

  def recording_save(checkpointer, step, *args, **kwargs):
    if checkpointer.workdir.name != train_hooks.BEST_FID_DIR:  # Resume points only.
      events.append(('save', step))
    return save(checkpointer, step, *args, **kwargs)

  monkeypatch.setattr(writers, 'create_writer',
                      lambda *a, **k: RecordingWriter(create_writer(*a, **k)))
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', recording_save)
  config = tiny_config(tfds_dir, quality_every_steps=2, num_quality_samples=200,
                       quality_cache_dir=str(tmp_path / 'quality_cache'),
                       inception_weights='stand_in.pth', eval_every_steps=4, eval_num_samples=40)
  tmp_path = tmp_path / 'run'
  state = train.train_and_evaluate(config, tmp_path)
  # Every save finds the scalars written so far flushed (a run killed after it resumes there and
  # never logs them again), and the scalars of the evaluation hooks are flushed before the next.
  pending = []
  for event in events:
    if event[0] == 'write':
      pending.append(event)
    elif event[0] == 'flush':
      pending = []
    else:  # (A background save may start after the loop has logged later steps.)
      assert not [w for w in pending if w[1] <= event[1]], (event, pending)
  assert [e[1] for e in events if e[0] == 'save'] == [2, 4]
  assert pending == []  # The writer was flushed at the end.
  hook_writes = [i for i, e in enumerate(events)
                 if e[0] == 'write' and any(t.startswith(('quality/', 'eval/')) for t in e[2])]
  # The untrained G's quality at step 0, quality at steps 2 and 4, FID at step 4.
  assert [events[i][1] for i in hook_writes] == [0, 2, 4, 4]
  for i in hook_writes:
    assert ('flush',) in events[i + 1:], events[i:]
    following = events[i + 1:events.index(('flush',), i + 1)]
    assert all(e[0] == 'write' and e[1] == events[i][1] for e in following), following
  assert int(state.step) == 4
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(state.generator.params))
  _assert_run_outputs(tmp_path, [2, 4], (8, 8, 1))
  summary = json.loads((tmp_path / 'quality.json').read_text())
  assert summary['step'] == 4 and summary['num_samples'] == 200 and summary['used_ema']
  assert len(summary['class_fractions']) == 10
  assert np.isclose(sum(summary['class_fractions']), 1.0)
  assert summary['untrained_frechet_distance'] > 0
  assert np.isclose(summary['frechet_distance_ratio'],
                    summary['frechet_distance'] / summary['untrained_frechet_distance'])
  assert [h['step'] for h in summary['history']] == [2, 4]
  _, tags = _event_tags(tmp_path)
  assert {'quality/frechet_distance', 'quality/num_classes_covered',
          'quality/min_class_fraction', 'quality/frechet_distance_ratio', 'quality/precision',
          'quality/recall', 'quality/density', 'quality/coverage', 'eval/fid',
          'eval/precision', 'eval/recall', 'eval/density', 'eval/coverage'} <= tags
  assert 0.0 <= summary['precision'] <= 1.0 and 0.0 <= summary['recall'] <= 1.0
  # The quality curves start at the untrained generator's score (step 0, ratio 1).
  scalars = run_logs.read_scalars(tmp_path)
  steps, ratios = scalars['quality/frechet_distance_ratio']
  assert steps.tolist() == [0, 2, 4] and ratios[0] == 1.0
  assert np.isclose(scalars['quality/frechet_distance'][1][0],
                    summary['untrained_frechet_distance'])
  # 40 real images once, then 40 generated ones at step 4 (the end).
  assert extracted_shapes == [(40, 8, 8, 1), (40, 8, 8, 1)]
  # Resumed (here: extended), the run keeps the scores already written, up to the step it
  # resumes from (it wrote its own alone). A score past it was of steps now trained again: the
  # file is rewritten without it at once (a copy set aside).
  summary['history'].append(dict(summary['history'][-1], step=5))
  (tmp_path / 'quality.json').write_text(json.dumps(summary))
  untrained = summary['untrained_frechet_distance']
  config.num_train_steps = 8
  # The untrained generator's score comes from the checkpoint, not from scoring it again.
  monkeypatch.setattr(train_hooks.DigitsQualityHook, 'score',
                      _counting(train_hooks.DigitsQualityHook.score, scored := []))
  # Stopped (SIGTERM, Ctrl-C) after step 7: quality.json was written at the end alone, so the
  # score of step 6 was lost, and the resume kept the history of the first launch, [2, 4].
  dispatched = train_metrics.ProgressClock.dispatched

  def stop_after_step_7(clock, done, state):
    dispatched(clock, done, state)
    if done == 7:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(train_metrics.ProgressClock, 'dispatched', stop_after_step_7)
  with caplog.at_level(logging.INFO), pytest.raises(preemption.TrainingStopped):
    train.train_and_evaluate(config, tmp_path)
  monkeypatch.setattr(train_metrics.ProgressClock, 'dispatched', dispatched)
  assert 'untrained generator (recorded in the checkpoint): Fréchet distance' in caplog.text
  summary = json.loads((tmp_path / 'quality.json').read_text())
  assert [h['step'] for h in summary['history']] == [2, 4, 6] and summary['step'] == 6
  (aside,) = (tmp_path / run_logs.ROLLED_BACK_DIR).iterdir()
  set_aside = json.loads((aside / 'quality.json').read_text())
  assert [h['step'] for h in set_aside['history']] == [2, 4, 5]
  train.train_and_evaluate(config, tmp_path)
  assert len(scored) == 2  # Steps 6 and 8 (the end): not the untrained state again.
  summary = json.loads((tmp_path / 'quality.json').read_text())
  assert [h['step'] for h in summary['history']] == [2, 4, 6, 8] and summary['step'] == 8
  assert summary['untrained_frechet_distance'] == untrained
  # The resumes kept the step-0 point and wrote no second one.
  steps, ratios = run_logs.read_scalars(tmp_path)['quality/frechet_distance_ratio']
  assert steps.tolist() == [0, 2, 4, 6, 8] and ratios[0] == 1.0


def test_unreadable_quality_and_best_fid_records_are_set_aside_not_written_over(tmp_path):
  """A quality.json or best_fid.json cut short (or edited by hand) was read as none: the resume
  wrote a new quality.json over it without a word, and took its first FID for a new best,
  deleting the earlier best-FID checkpoint."""
  aside = tmp_path / 'rolled_back_logs' / 'now'
  (tmp_path / train_hooks.QUALITY_FILE).write_text('{"step": 4, "history": [{"st')
  (tmp_path / train_hooks.BEST_FID_FILE).write_text('{"step": 2, "fid": "n/a"}')
  (tmp_path / train_hooks.BEST_FID_DIR / 'checkpoints' / '2').mkdir(parents=True)
  moved = train_hooks.set_aside_unreadable_records(str(tmp_path), aside)
  assert [(name, with_it) for name, _, with_it in moved] == [('quality.json', None),
                                                             ('best_fid.json', 'best_fid/')]
  assert moved[0][1].startswith('JSONDecodeError: Unterminated string')
  assert moved[1][1] == 'not the record this version writes'
  assert sorted(os.listdir(tmp_path)) == ['rolled_back_logs']
  assert (aside / train_hooks.QUALITY_FILE).read_text() == '{"step": 4, "history": [{"st'
  assert (aside / train_hooks.BEST_FID_DIR / 'checkpoints' / '2').is_dir()
  # Readable records stay where they are.
  (tmp_path / train_hooks.QUALITY_FILE).write_text('{"step": 4, "history": []}')
  (tmp_path / train_hooks.BEST_FID_FILE).write_text('{"step": 2, "fid": 12.5}')
  assert not train_hooks.set_aside_unreadable_records(str(tmp_path), aside)
  assert sorted(os.listdir(tmp_path)) == ['best_fid.json', 'quality.json', 'rolled_back_logs']


def test_a_resume_that_does_not_score_trims_quality_json_itself(tmp_path):
  """Only the quality hook trimmed the scores of steps a resume trains again: a resume with
  quality off kept them as the current score (while the log said they were set aside)."""
  def score(fd):
    return {'frechet_distance': fd, 'num_classes_covered': 10, 'min_class_fraction': 0.05}

  history = [dict(score(fd), step=step) for step, fd in ((2, 50.0), (4, 20.0), (6, 4.0))]
  saved = dict(score(4.0), step=6, num_samples=200, used_ema=True, history=history,
               untrained_frechet_distance=100.0, untrained_num_classes_covered=3,
               frechet_distance_ratio=0.04, meets_quality_bar=True)
  path = tmp_path / train_hooks.QUALITY_FILE
  path.write_text(json.dumps(saved))
  train_hooks.trim_quality_json(tmp_path, 6)  # Nothing after step 6: untouched.
  assert json.loads(path.read_text()) == saved
  train_hooks.trim_quality_json(tmp_path, 4)
  trimmed = json.loads(path.read_text())
  assert trimmed['step'] == 4 and [h['step'] for h in trimmed['history']] == [2, 4]
  assert trimmed['frechet_distance'] == 20.0 and trimmed['frechet_distance_ratio'] == 0.2
  assert not trimmed['meets_quality_bar'] and trimmed['num_samples'] == 200
  train_hooks.trim_quality_json(tmp_path, 1)  # No score left: the file goes.
  assert not path.exists()


def test_tfds_mock_dataset_run_through_tf_data(tfds_dir, tmp_path, caplog):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = tiny_config(str(tmp_path / 'tfds'), dataset='mnist', device_resident='never',
                       num_train_steps=2, checkpoint_every_steps=1, sample_every_steps=0,
                       parallelism='pmap', steps_per_dispatch=4)
  caplog.set_level(logging.INFO)
  with tfds.testing.mock_data(num_examples=24):
    state = train.train_and_evaluate(config, tmp_path / 'run')
  assert int(state.step) == 2
  # Fused steps need device-resident data and shard_map: said, not silently dropped.
  assert any('steps_per_dispatch=4 fuses steps only with device-resident data and '
             'parallelism=shard_map; this run (pmap) dispatches one step at a time.'
             in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
  # The run's line says which data path it took and why.
  assert any(r.getMessage().endswith("data streamed by tf.data (device_resident='never').")
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert state.generator.params['project']['kernel'].ndim == 2  # pmap's device axis dropped.
  assert _checkpoint_steps(tmp_path / 'run') == [1, 2]
  # sample_every_steps=0 disables periodic grids; the final one (and its animation) is always written.
  assert sorted(p.name for p in (tmp_path / 'run' / 'samples').iterdir()) == [
      'progress.gif', 'step_000002.png']
  files, tags = _event_tags(tmp_path / 'run')
  assert files and {'d_loss', 'g_loss', 'samples'} <= tags


# ---- resume ---------------------------------------------------------------------------------


def test_resume_with_models_of_another_shape_is_one_clear_error(tfds_dir, tmp_path, caplog,
                                                               monkeypatch):
  config = tiny_config(tfds_dir, num_train_steps=2, sample_every_steps=0)
  train.train_and_evaluate(config, tmp_path)
  before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob('*') if p.is_file())
  config.update(num_train_steps=4, generator_width=16, ema_decay=0.0, discriminator_norm='layer')

  def not_yet(*args, **kwargs):  # A folder of another size would be prepared (minutes) first.
    raise AssertionError('the data was read before the resume was refused')

  with monkeypatch.context() as patch, caplog.at_level(logging.WARNING), pytest.raises(
      UserError) as caught:
    patch.setattr(train.data, 'dataset_info', not_yet)
    train.train_and_evaluate(config, tmp_path)
  message = str(caught.value)
  assert 'generator_width 8 -> 16' in message and 'EMA on/off' in message
  assert "discriminator_norm 'batch' -> 'layer'" in message
  assert 'config.json' in message and '\n' not in message
  # Refused before any restore was tried: no fallback warnings, nothing moved or written.
  assert 'cannot be restored' not in caplog.text
  assert sorted((str(p), p.stat().st_size) for p in tmp_path.rglob('*') if p.is_file()) == before
  # What may change on resume still resumes (here: the learning rate and the duration).
  config.update(generator_width=8, ema_decay=tiny_config(tfds_dir).ema_decay, g_learning_rate=1e-4,
                discriminator_norm='batch')
  assert int(train.train_and_evaluate(config, tmp_path).step) == 4


# Device-resident data with BatchNorm resumes bit-identically in tests/test_preemption.py (a
# stop's checkpoint, then the rest); here tf.data, and device-resident data with the extra
# state of spectral norm and ADA.
@pytest.mark.parametrize('device_resident,discriminator_norm,augment_policy',
                         [('never', 'batch', ''),
                          ('always', 'spectral', 'color,translation,cutout')])
def test_resume_is_bit_identical(tfds_dir, tmp_path, monkeypatch, device_resident,
                                 discriminator_norm, augment_policy):
  """N steps straight == N/2 steps, a restart from the checkpoint, then N/2 more (spectral
  norm: its power-iteration state resumes too; augmentation (adaptive): its draws follow the
  step's key and its probability is checkpointed)."""
  ada = {}
  if augment_policy:
    ada = dict(ada_target=0.6, ada_speed_images=64)
    # A young D scores real images below 0 (ADA would keep p at 0); a controller that always
    # raises p makes it differ at every step, so its restore is checked.
    monkeypatch.setattr(augment, 'adapt_probability',
                        lambda p, *args, **kwargs: jnp.minimum(p + 0.25, 1.0))
  config = tiny_config(tfds_dir, device_resident=device_resident, num_train_steps=4,
                       checkpoint_every_steps=0, sample_every_steps=0, log_every_steps=1,
                       discriminator_norm=discriminator_norm, augment=augment_policy, **ada)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  config.num_train_steps = 2
  half = train.train_and_evaluate(config, tmp_path / 'resumed')
  config.num_train_steps = 4
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  assert _checkpoint_steps(tmp_path / 'resumed') == [2, 4]
  assert int(resumed.step) == int(straight.step) == 4
  # The halfway state really differs, so equality below is not vacuous.
  assert any(not np.array_equal(a, b) for a, b in zip(_tree_leaves(half.generator.params),
                                                      _tree_leaves(straight.generator.params)))
  if discriminator_norm == 'spectral':  # (At 8x8 D has no BatchNorm: one conv, the logit.)
    assert len(jax.tree.leaves(straight.discriminator.batch_stats)) == 4  # u, sigma of 2.
  if ada:
    assert float(half.augment_probability) == 0.5
    assert float(straight.augment_probability) == float(resumed.augment_probability) == 1.0
  for a, b in zip(_tree_leaves(straight), _tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_resume_on_another_setup_says_what_changed_and_what_it_does(tfds_dir, tmp_path,
                                                                    monkeypatch, caplog):
  """Each checkpoint records the devices, data path and versions that saved it; a resume where
  they differ (another machine; 'auto' choosing tf.data for a smaller device) says so once."""
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import device_resident  # pylint: disable=g-import-not-at-top
  config = tiny_config(tfds_dir, num_train_steps=2, sample_every_steps=0, log_every_steps=1)
  train.train_and_evaluate(config, tmp_path)
  with checkpointing.Checkpointer(tmp_path, read_only=True) as checkpointer:
    saved = checkpointer.saved_run_setup(2)
  # With the images trained on, a fact of the step alone (2 batches of 16), and the step the
  # run was to end at (this final checkpoint's own: its samples and scores come after it).
  assert saved == {**run_checks.run_setup(jax.device_count(), device_resident=True),
                   train.IMAGES_SEEN_KEY: 32, train.RUN_END_KEY: 2}
  assert saved['devices'] == 8 and saved['data'] == 'device-resident'
  # As if saved on a machine with 2 devices; this one's device memory fits no dataset, so
  # device_resident='auto' reads through tf.data.
  metadata_file = tmp_path / 'checkpoints' / '2' / '_CHECKPOINT_METADATA'
  metadata = json.loads(metadata_file.read_text())
  metadata['custom_metadata']['devices'] = 2
  metadata_file.write_text(json.dumps(metadata))
  monkeypatch.setattr(device_resident, '_memory_stats', lambda device: {'bytes_limit': 4})
  config.num_train_steps = 4
  with caplog.at_level(logging.WARNING):
    assert int(train.train_and_evaluate(config, tmp_path).step) == 4
  warnings = [r.getMessage() for r in caplog.records if 'another setup' in r.getMessage()]
  assert len(warnings) == 1, caplog.text
  assert warnings[0].startswith(
      "Resuming the checkpoint of step 2 on another setup than it was saved on: devices 2 -> 8, "
      "data 'device-resident' -> 'tf.data'. Training goes on from it, but not bit-identically")
  assert 'reduced in another order' in warnings[0]
  assert "batches after step 2 are drawn in another order (device_resident='auto'" in warnings[0]
  # The new checkpoint records the setup that saved it: resuming here again says nothing.
  caplog.clear()
  config.num_train_steps = 6
  with caplog.at_level(logging.WARNING):
    assert int(train.train_and_evaluate(config, tmp_path).step) == 6
  assert 'another setup' not in caplog.text and 'other dcgan_jax code' not in caplog.text
  # As if saved by a dcgan_jax from before the code's digest was recorded (then upgraded): the
  # resume said nothing.
  metadata_file = tmp_path / 'checkpoints' / '6' / '_CHECKPOINT_METADATA'
  metadata = json.loads(metadata_file.read_text())
  del metadata['custom_metadata']['dcgan_jax_code']
  metadata_file.write_text(json.dumps(metadata))
  caplog.clear()
  config.num_train_steps = 8
  with caplog.at_level(logging.WARNING):
    assert int(train.train_and_evaluate(config, tmp_path).step) == 8
  warnings = [r.getMessage() for r in caplog.records if 'dcgan_jax code' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith(
      'Resuming the checkpoint of step 6, saved by other dcgan_jax code: dcgan_jax_code '
      'unrecorded -> '), caplog.text


@_ORBAX_READ_NOISE
def test_epoch_counts_the_images_trained_on_across_batch_size_changes(tfds_dir, tmp_path,
                                                                       caplog, monkeypatch):
  """epoch was step / steps_per_epoch at the current batch size: a resume at another batch
  size made it jump, or go backwards. Each checkpoint now records the images trained on."""
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import digits  # pylint: disable=g-import-not-at-top
  config = tiny_config(tfds_dir, num_train_steps=4, batch_size=16, log_every_steps=2,
                       sample_every_steps=0, checkpoint_every_steps=2)
  train.train_and_evaluate(config, tmp_path)
  config.update(num_train_steps=8, batch_size=32)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path)
  assert 'batch_size 16 -> 32' in caplog.text
  assert 'the epoch scalar and a length in num_epochs go on counting the images' in caplog.text
  assert 'fuse differently' not in caplog.text and 'new seed' not in caplog.text
  config.update(num_train_steps=10, batch_size=8)
  train.train_and_evaluate(config, tmp_path)
  steps, epochs = run_logs.read_scalars(tmp_path)['epoch']
  seen = [32, 64, 128, 192, 208]  # 2 x 16, then 2 x 32 per log, then 2 x 8.
  np.testing.assert_array_equal(steps, [2, 4, 6, 8, 10])
  np.testing.assert_allclose(epochs, np.array(seen) / digits.NUM_EXAMPLES, rtol=1e-6)
  with checkpointing.Checkpointer(tmp_path, read_only=True) as checkpointer:
    assert [checkpointer.saved_run_setup(s)[train.IMAGES_SEEN_KEY] for s in (6, 8, 10)] == [
        128, 192, 208]
  # A length in epochs ends after that many epochs of images: 208 seen at step 10, 32 left at
  # batch 16 is 2 more steps (converted at batch 16 alone, 240 images would end at step 15).
  config.update(num_train_steps=-1, num_epochs=240 / digits.NUM_EXAMPLES, batch_size=16,
                lr_schedule='cosine')
  # The same launch where step 10 is damaged: the restore falls back to step 8 (192 seen, at
  # batch 32), so 48 images are left, 3 steps at 16; the length was first counted from step 10,
  # and the optimizers' decaying schedules are rebuilt for the run's real length.
  fallback_dir = tmp_path.parent / f'{tmp_path.name}_fallback'
  shutil.copytree(tmp_path, fallback_dir)
  for path in (fallback_dir / 'checkpoints' / '10' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'garbage')
  built, create = [], train.create_train_state
  monkeypatch.setattr(train, 'create_train_state',
                      lambda *args: built.append((args[2], create(*args))) or built[-1][1])
  caplog.clear()
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, fallback_dir)
  assert int(state.step) == 11
  assert 'Resumed from step 8, not the latest checkpoint (step 10): the run ends at step 11' in (
      caplog.text)
  # (The first state was built before the restore, from what step 10 could tell.)
  assert len(built) == 2 and built[-1][0] == 11
  assert state.generator.tx is built[-1][1].generator.tx  # Trained with the 11-step schedule.
  with checkpointing.Checkpointer(fallback_dir, read_only=True) as checkpointer:
    assert checkpointer.saved_run_setup(11)[train.IMAGES_SEEN_KEY] == 240
  monkeypatch.undo()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 12
  assert ('the run had trained on 208 by step 10 (at another batch_size), so it ends at step 12 '
          'rather than 15') in caplog.text
  # The run's line gives the recounted length too (it was logged before the recount).
  assert 'Run: 12 steps' in caplog.text and 'Run: 15 steps' not in caplog.text
  with checkpointing.Checkpointer(tmp_path, read_only=True) as checkpointer:
    assert checkpointer.saved_run_setup(12)[train.IMAGES_SEEN_KEY] == 240
  # The same launch again (a decaying schedule): the schedules did not move, though the
  # checkpoint's length converted without its images seen (15 steps) differs from the run's 12.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path)
  assert 'learning-rate schedules move' not in caplog.text
  # A checkpoint from before the count: its step at its own config's batch size.
  assert train.saved_images_seen(6, {}, {'batch_size': 32}, config) == 192
  assert train.saved_images_seen(6, {'images_seen': 100}, {'batch_size': 32}, config) == 100
  assert train.saved_images_seen(6, {'images_seen': 'x'}, {}, config) == 96  # Now's batch, 16.


@_ORBAX_READ_NOISE
def test_corrupt_latest_checkpoint_falls_back_to_previous(tfds_dir, tmp_path, caplog):
  config = tiny_config(tfds_dir, sample_every_steps=0)
  train.train_and_evaluate(config.to_dict(), tmp_path)  # A plain dict of the fields does too.
  assert _checkpoint_steps(tmp_path) == [2, 4]
  for path in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'garbage')  # The array data of step 4 is destroyed.
  config.num_train_steps = 6
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  text = caplog.text
  assert 'checkpoint of step 4' in text and 'falling back' in text
  assert 'Resumed from the checkpoint of step 2' in text
  # A longer run is a changed setting like any other: allowed, and said.
  assert 'Resuming with changed settings: num_train_steps 4 -> 6. config.json' in text
  assert int(state.step) == 6
  assert _checkpoint_steps(tmp_path) == [2, 4, 6]  # Step 4 was trained and saved again.
  assert any((tmp_path / 'corrupt_checkpoints').iterdir())


@_ORBAX_READ_NOISE
def test_finished_run_launched_again_prepares_no_data(tfds_dir, tmp_path, monkeypatch, caplog):
  """A finished run has nothing to train: the dataset is not loaded onto the devices (nor, with
  FID on, are the real images scored) before the restore says so. If the restore falls back
  past a damaged final checkpoint, there is training to do, and the data is prepared then."""
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  config = tiny_config(tfds_dir, sample_every_steps=0)
  loads, load = [], data.load_all_images

  def counting_load(*args, **kwargs):
    loads.append(1)
    return load(*args, **kwargs)

  monkeypatch.setattr(data, 'load_all_images', counting_load)
  train.train_and_evaluate(config, tmp_path)
  assert len(loads) == 1 and _checkpoint_steps(tmp_path) == [2, 4]
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 4 and 'nothing to train' in caplog.text
  assert len(loads) == 1  # Not loaded again.
  for path in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'garbage')  # The final checkpoint's arrays are destroyed.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  assert 'Resumed from the checkpoint of step 2' in caplog.text
  assert len(loads) == 2 and int(state.step) == 4  # Prepared after the restore, and trained.
  assert _checkpoint_steps(tmp_path) == [2, 4]


def test_background_checkpoints_save_what_the_loop_would_have_saved(tfds_dir, tmp_path,
                                                                    monkeypatch):
  """Periodic saves from the worker thread hold the same state as saves made in the loop."""
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  threads, save = [], checkpointing.Checkpointer.save

  def recording_save(checkpointer, step, *args, **kwargs):
    threads.append((step, threading.current_thread() is threading.main_thread()))
    return save(checkpointer, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpointer, 'save', recording_save)
  finals = {}
  for background in (True, False):
    threads.clear()
    config = tiny_config(tfds_dir, num_train_steps=5, checkpoint_every_steps=1,
                         sample_every_steps=0, keep_checkpoints=10,
                         background_checkpoints=background)
    finals[background] = train.train_and_evaluate(config, tmp_path / str(background))
    # Steps 1-4 periodically (in the worker, or in the loop), step 5 at the end in the loop.
    assert threads == [(1, not background), (2, not background), (3, not background),
                       (4, not background), (5, True)]
  for a, b in zip(_tree_leaves(finals[True]), _tree_leaves(finals[False])):
    np.testing.assert_array_equal(a, b)
  target = {'gan': finals[True], 'train_key': np.zeros(2, np.uint32)}
  restored = {}
  for background in (True, False):
    with checkpointing.Checkpointer(tmp_path / str(background), read_only=True) as reader:
      assert reader.all_steps() == [1, 2, 3, 4, 5]
      restored[background] = [reader.restore(target, step=s)[0] for s in (1, 2, 3, 4)]
  for a, b in zip(restored[True], restored[False]):
    assert int(a['gan'].step) == int(b['gan'].step)
    for x, y in zip(_tree_leaves(a), _tree_leaves(b)):
      np.testing.assert_array_equal(x, y)
  # The saved steps really differ, so the equality above is not vacuous.
  assert any(not np.array_equal(x, y)
             for x, y in zip(_tree_leaves(restored[True][0]['gan'].generator.params),
                             _tree_leaves(restored[True][3]['gan'].generator.params)))


def test_logged_learning_rates_follow_the_schedules(tfds_dir, tmp_path, caplog):
  """Each log's rates are the schedules' values at its step (computed on the host's CPU)."""
  config = tiny_config(tfds_dir, num_train_steps=6, log_every_steps=1, checkpoint_every_steps=0,
                       sample_every_steps=0, lr_schedule='cosine', warmup_steps=2, d_steps=2)
  train.train_and_evaluate(config, tmp_path)
  scalars = run_logs.read_scalars(tmp_path)
  g_schedule, d_schedule = train.make_schedules(config, 6)
  for tag, values in (('g_learning_rate', [g_schedule(s - 1) for s in range(1, 7)]),
                      ('d_learning_rate', [d_schedule(2 * s - 1) for s in range(1, 7)])):
    steps, logged = scalars[tag]
    assert list(steps) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(logged, np.asarray(values, np.float32), rtol=1e-6)
  g = scalars['g_learning_rate'][1]
  assert g[0] < g[1] < g[2] and g[2] > g[3] > g[4] > g[5]  # Warmup, then decay.
  # Extended to 10 steps with d_steps 3: the decay starts again from where the longer schedule
  # is at step 6 (said on resuming), and D's schedule, which counts D's 12 updates so far (not
  # 6 x 3), logs the rate D used (it logged a rate near 0 where D used ~16% of its peak).
  config.update(num_train_steps=10, d_steps=3)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path)
  g_schedule, d_schedule = train.make_schedules(config, 10)
  old_g, old_d = train.make_schedules(tiny_config(tfds_dir, num_train_steps=6,
                                                  lr_schedule='cosine', warmup_steps=2,
                                                  d_steps=2), 6)
  assert (f"The learning-rate schedules move at step 6: G's from {float(old_g(6)):.3g} to "
          f"{float(g_schedule(6)):.3g} and D's from {float(old_d(12)):.3g} to "
          f"{float(d_schedule(12)):.3g}") in caplog.text
  steps, logged = run_logs.read_scalars(tmp_path)['d_learning_rate']
  assert list(steps) == list(range(1, 11))
  np.testing.assert_allclose(logged[6:], np.asarray(
      [d_schedule(12 + 3 * (s - 6) - 1) for s in range(7, 11)], np.float32), rtol=1e-6)


def test_training_goes_on_while_a_background_checkpoint_is_saved(tfds_dir, tmp_path,
                                                                 monkeypatch):
  """The save of step 2 is held until the loop has logged step 3: only a worker allows that."""
  from dcgan_jax import checkpointing, writers  # pylint: disable=g-import-not-at-top
  logged_3, waited = threading.Event(), []
  create_writer, save = writers.create_writer, checkpointing.Checkpointer.save

  def recording_writer(*args, **kwargs):
    writer = create_writer(*args, **kwargs)
    write_scalars = writer.write_scalars

    def write(step, scalars):
      if step >= 3:
        logged_3.set()
      return write_scalars(step, scalars)

    writer.write_scalars = write
    return writer

  def held_save(checkpointer, step, *args, **kwargs):
    if step == 2:
      waited.append(logged_3.wait(timeout=120))
    return save(checkpointer, step, *args, **kwargs)

  monkeypatch.setattr(writers, 'create_writer', recording_writer)
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', held_save)
  config = tiny_config(tfds_dir, num_train_steps=6, checkpoint_every_steps=2, log_every_steps=1,
                       sample_every_steps=0)
  assert int(train.train_and_evaluate(config, tmp_path).step) == 6
  assert waited == [True]
  assert _checkpoint_steps(tmp_path) == [2, 4, 6]


def _poison_step(monkeypatch, bad_step: int, name: str, factor: float) -> None:
  """Makes loss ``name`` of step ``bad_step`` (1-based) non-finite (times ``factor``).

  Only where the loop calls the step itself: streamed input (``device_resident='never'``).
  """
  original = parallel.DataParallelStep.__call__

  def poisoned(self, state, batch, rng):
    step = int(jax.device_get(state.step))  # Steps done before this update.
    state, metrics = original(self, state, batch, rng)
    if step + 1 == bad_step:
      metrics = dict(metrics, **{name: metrics[name] * factor})
    return state, metrics

  monkeypatch.setattr(parallel.DataParallelStep, '__call__', poisoned)


def _counting_step(monkeypatch):
  """Counts the loop's step calls (streamed input: one call per step); returns the counter."""
  calls, original = [0], parallel.DataParallelStep.__call__

  def counted(self, state, batch, rng):
    calls[0] += 1
    return original(self, state, batch, rng)

  monkeypatch.setattr(parallel.DataParallelStep, '__call__', counted)
  return calls


def test_sample_grids_are_written_after_later_steps_are_queued(tfds_dir, tmp_path, monkeypatch):
  """A grid due alone is written once the loop has moved on, and shows the state of its step."""
  from dcgan_jax import sample, sample_grid  # pylint: disable=g-import-not-at-top
  calls, written = _counting_step(monkeypatch), {}
  write_grid = train_hooks.write_sample_grid

  def recording_write(workdir, step, *args, **kwargs):
    written[step] = calls[0]
    return write_grid(workdir, step, *args, **kwargs)

  monkeypatch.setattr(train_hooks, 'write_sample_grid', recording_write)
  config = tiny_config(tfds_dir, num_train_steps=6, device_resident='never', log_every_steps=1,
                       checkpoint_every_steps=2, sample_every_steps=2, keep_checkpoints=10,
                       ema_decay=0.0, g_learning_rate=0.02)  # Grids that change step to step.
  train.train_and_evaluate(config, tmp_path)
  assert sorted(written) == [2, 4, 6]
  # Steps 2 and 4: written while later steps were queued (at once, they would show 2 and 4).
  assert written[2] > 2 and written[4] > 4 and written[6] == 6
  latents = train_hooks.latents(int(config.seed), train_hooks.SAMPLE_TAG,
                           int(config.num_sample_images), int(config.latent_dim))
  grids = []
  for step in (2, 4, 6):
    generator, variables, _, restored = sample.load_generator(tmp_path, step=step)
    assert restored == step
    expected = sample_grid.make_grid(sample.generate(generator, variables, latents),
                                     num_columns=3)
    with Image.open(tmp_path / 'samples' / f'step_{step:06d}.png') as image:
      grids.append(np.asarray(image).reshape(expected.shape))  # Grey PNGs read as [H, W].
    np.testing.assert_allclose(grids[-1], expected, atol=1)  # Same program, one device.
  assert not np.array_equal(grids[0], grids[1])  # The steps' grids differ: not vacuous.


def test_a_queued_sample_grid_after_a_non_finite_loss_is_not_written(tfds_dir, tmp_path,
                                                                    monkeypatch):
  """The deferred grid keeps the check a grid written at once had: no grid of a bad state."""
  _poison_step(monkeypatch, 5, 'g_loss', np.nan)
  # Grids queued at 2, 4 and 6, each written when the next is queued or at the log of 7; the
  # grid of 6 is the first thing to look at a tracker that has seen step 5.
  config = tiny_config(tfds_dir, num_train_steps=8, device_resident='never',
                       checkpoint_every_steps=0, log_every_steps=7, sample_every_steps=2)
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite g_loss at step 5; no checkpoint was saved'):
    train.train_and_evaluate(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / 'samples').glob('*.png')) == [
      'step_000002.png', 'step_000004.png']


# ---- failures -------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tfds_dir, tmp_path, monkeypatch):
  _poison_step(monkeypatch, 3, 'g_loss', np.nan)
  # Streamed input: the loop calls the step itself (patched above) once per step.
  config = tiny_config(tfds_dir, num_train_steps=6, device_resident='never')
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite g_loss at step 3; the last good checkpoint \(step 2\)'):
    train.train_and_evaluate(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == [2]
  assert sorted(p.name for p in (tmp_path / 'samples').iterdir()) == ['step_000002.png']


def test_a_full_disk_at_a_sample_grid_is_one_line_and_the_run_resumes(tfds_dir, tmp_path,
                                                                     monkeypatch):
  """A write the disk refused (PIL's, whose OSError names no file) ended the run with a
  traceback; it is one line naming the file and the step the same command resumes from."""
  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(Image.Image, 'save', full_disk)
  config = tiny_config(tfds_dir, num_train_steps=6, sample_every_steps=4)
  with pytest.raises(write_errors.WriteError) as excinfo:
    train.train_and_evaluate(config, tmp_path)
  assert str(excinfo.value) == (
      f'Could not write {tmp_path / "samples" / "step_000004.png"} (No space left on device); '
      'free some disk space (or raise the quota or file-size limit) and run the same command '
      f'again: the checkpoints in {tmp_path / "checkpoints"} are intact, and it resumes from '
      'step 4.')
  assert _checkpoint_steps(tmp_path) == [2, 4]
  assert not list((tmp_path / 'samples').iterdir())  # No half-written grid left behind.
  monkeypatch.undo()
  assert int(train.train_and_evaluate(config, tmp_path).step) == 6


def test_a_full_disk_at_the_event_file_is_one_line(tfds_dir, tmp_path, monkeypatch, caplog):
  """TensorBoard's writer failed in clu's thread: clu logged TensorFlow's traceback and raised
  it again at the writer's next call, as a traceback of clu's and TensorFlow's internals."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from clu.metric_writers import summary_writer  # pylint: disable=g-import-not-at-top
  events = tmp_path / 'events.out.tfevents.1.host.2.0.v2'

  def full_disk(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, f'{{{{function_node __wrapped__WriteSummary}}}} {events}; No space left on '
        f'device\n\tFailed to flush 3 events to {events}\n\tCould not flush events file.')

  monkeypatch.setattr(summary_writer.SummaryWriter, 'write_scalars', full_disk)
  config = tiny_config(tfds_dir, num_train_steps=4, sample_every_steps=0)
  with caplog.at_level(logging.INFO), pytest.raises(write_errors.WriteError) as excinfo:
    train.train_and_evaluate(config, tmp_path)
  assert str(excinfo.value).startswith(f'Could not write {events} (No space left on device); ')
  assert 'Error in producer thread' not in caplog.text  # clu's traceback: said once, above.


@pytest.mark.parametrize('background', [True, False])
def test_a_checkpoint_due_after_a_non_finite_loss_is_not_saved(tfds_dir, tmp_path, monkeypatch,
                                                               background):
  """The check before a save sees the bad step, in the worker as in the loop."""
  _poison_step(monkeypatch, 3, 'd_loss', np.inf)
  # Checkpoints at 3 and 6, logs (the loop's own check) at 4: the save at 3 must refuse.
  config = tiny_config(tfds_dir, num_train_steps=6, device_resident='never',
                       checkpoint_every_steps=3, log_every_steps=4, sample_every_steps=0,
                       background_checkpoints=background)
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite d_loss at step 3; no checkpoint was saved'):
    train.train_and_evaluate(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == []


@pytest.mark.parametrize('overrides,message', [
    ({'image_size': 48}, r'image_size must be 4·2\^k: 8, 16, 32, 64, 128 or 256'),
    ({'batch_size': 12}, 'batch_size 12 is not divisible by the 8 devices'),
    ({'dataset': 'no_such_dataset'}, "Unknown dataset 'no_such_dataset'; use one of digits"),
    ({'loss': 'nope'}, 'nope'),
    ({'augment': 'flip'}, 'augment must be a comma-separated subset of blit, geom, ada_color, filter, noise'),
    ({'steps_per_dispatch': 0}, 'steps_per_dispatch must be a positive integer'),
    ({'batch_size': 0}, r'batch_size must be positive \(got 0\); use a multiple of the 8'),
    ({'num_train_steps': 0}, r'num_train_steps must be positive, or -1 .* \(got 0\)'),
    ({'num_train_steps': -5}, r'num_train_steps must be positive, or -1 .* \(got -5\)'),
    ({'num_train_steps': -1, 'num_epochs': 0.0}, 'num_epochs must be a finite positive number with'),
    ({'adam_b1': 1.5}, r'b1 \(adam_b1\) must be in \[0, 1\) \(got 1.5\)'),
    # Refused on the tf.data path too (it filled batches by repeating images), not only on the
    # device-resident one.
    ({'batch_size': 2048, 'device_resident': 'never'},
     'batch_size 2048 exceeds the 1797 examples of the dataset'),
])
def test_bad_config_fails_before_touching_the_workdir(tfds_dir, tmp_path, overrides, message):
  marker = tmp_path / 'checkpoints' / '7' / 'marker'
  marker.parent.mkdir(parents=True)
  marker.write_text('an earlier run')
  before = sorted(str(p) for p in tmp_path.rglob('*'))
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(tiny_config(tfds_dir, **overrides), tmp_path)
  assert sorted(str(p) for p in tmp_path.rglob('*')) == before
  assert marker.read_text() == 'an earlier run'


# ---- the default config's quality bar (the README run) --------------------------------------


@pytest.mark.slow
def test_default_config_meets_the_quality_bar(tmp_path, cache_home, tfds_dir,
                                              seed_digits_classifier):
  """Runs the README command (one CPU device, like a plain install) and reads quality.json."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  env = dict(os.environ)
  # A plain machine: one CPU device. Compiled at conftest's LLVM level: the same quality.json
  # to the last digit as the default level (measured), and a little faster.
  env['XLA_FLAGS'] = os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', '')
  env['XDG_CACHE_HOME'] = str(cache_home)
  seed_digits_classifier(cache_home)  # Trained once per test run (tests/conftest.py).
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.main', '--config=configs/default.py',
       f'--workdir={workdir}', f"--config.data_dir={tfds_dir}"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'quality.json').read_text())
  assert summary['frechet_distance_ratio'] <= 0.10, summary
  assert summary['num_classes_covered'] == 10, summary
  assert summary['min_class_fraction'] >= 0.03, summary
  assert summary['meets_quality_bar']
  assert _checkpoint_steps(workdir)
  assert list(workdir.glob('events.out.tfevents*'))
  assert list((workdir / 'samples').glob('step_*.png'))
