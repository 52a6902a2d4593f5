"""Training without TensorFlow: dataset 'array' (numpy) and the JSON-lines writer.

A JAX-only environment (a GPU container without TensorFlow, tfds or TensorBoard) can still run
the whole training program when the data comes as a numpy array.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from dcgan_jax import data
from dcgan_jax import run_logs
from dcgan_jax import writers
from dcgan_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNNER = ROOT / 'tests' / 'no_tensorflow_runner.py'


def _array_config(path, **overrides):
  fields = dict(dataset='array', dataset_path=str(path), image_size=8, channels=1, crop_size=0,
                split='train')
  return ml_collections.ConfigDict({**fields, **overrides})


def test_array_dataset_reads_npy_npz_and_grey_hw(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  np.save(tmp_path / 'a.npy', images)
  np.savez(tmp_path / 'b.npz', images=images, labels=np.arange(5))
  np.savez(tmp_path / 'c.npz', images[..., 0])  # One unnamed [N, H, W] array.
  for name in ('a.npy', 'b.npz', 'c.npz'):
    config = _array_config(tmp_path / name)
    info = data.dataset_info(config)
    assert (info.num_examples, info.image_shape) == (5, (8, 8, 1))
    loaded = data.load_all_images(config)
    np.testing.assert_array_equal(loaded, images)
    assert isinstance(loaded, np.ndarray) and not isinstance(loaded, np.memmap)
  np.testing.assert_array_equal(data.load_all_images(_array_config(tmp_path / 'a.npy'),
                                                     max_examples=2), images[:2])


@pytest.mark.parametrize('make,message', [
    (None, "dataset 'array' needs dataset_path"),
    (lambda p: None, "images.npy' does not exist; pass a .npy or .npz"),
    (lambda p: p.mkdir(), "images.npy' is not a file"),
    (lambda p: np.save(p, np.zeros((3, 8, 8, 3), np.uint8)),
     'expected uint8 [N, 8, 8, 1] (values 0..255). Only the channels differ: set channels=3.'),
    # Only the type wrong: the advice was to resize the images.
    (lambda p: np.save(p, np.zeros((3, 8, 8, 1), np.float32)),
     'holds float32 [3, 8, 8, 1]; expected uint8 [N, 8, 8, 1] (values 0..255). Only the type '
     'differs: for values in [0, 1], np.clip(np.round(x * 255), 0, 255)'),
    (lambda p: np.save(p, np.zeros((3, 16, 16, 1), np.uint8)),
     'Set image_size=16 (and channels) to match, or resize the images.'),
    # Found by a sweep of image shapes: the advice for each of these was to set image_size and
    # channels to match (28 is refused; C first needed a transpose), and every float array was
    # told to multiply by 255 (white images from [0, 255] data).
    (lambda p: np.save(p, np.zeros((3, 28, 28), np.uint8)),
     '28x28 is not a size the models take (4·2^k: 8 to 256): pad the images to 32x32, e.g. '
     'np.pad(x, ((0, 0), (2, 2), (2, 2))) (black borders'),
    (lambda p: np.save(p, np.zeros((3, 1, 8, 8), np.uint8)),
     'The channels come first (N, C, H, W); np.transpose(x, (0, 2, 3, 1)) puts them last.'),
    (lambda p: np.save(p, np.full((3, 8, 8, 1), 200.0, np.float32)),
     'for values in [0, 255], np.clip(np.round(x), 0, 255)'),
    (lambda p: np.save(p, np.full((3, 8, 8, 1), -0.5, np.float32)),
     'for values in [-1, 1], np.clip(np.round((x + 1) * 127.5), 0, 255)'),
    (lambda p: np.save(p, np.full((3, 8, 8, 1), np.nan, np.float32)),
     'its values are not finite (NaN or inf): check how the array was made.'),
    (lambda p: np.save(p, np.array([np.nan, 0.5, 1.0] * 64, np.float32).reshape(3, 8, 8, 1)),
     'it holds NaN or inf values (np.nan_to_num(x) makes them 0); then, for values in [0, 1]'),
    (lambda p: np.save(p, np.zeros((3, 8, 8, 1), bool)),
     'convert it with x.astype(np.uint8) * 255 (True is white)'),
    # Integers within 0..255 only need the type (x * 255 would saturate them).
    (lambda p: np.save(p, np.zeros((3, 8, 8, 1), np.int64)),
     'Only the type differs: convert it with x.astype(np.uint8) once its values'),
    (lambda p: np.save(p, np.zeros((0, 8, 8, 1), np.uint8)),
     'holds uint8 [0, 8, 8, 1]; expected uint8 [N, 8, 8, 1] (values 0..255). It holds no images.'),
    (lambda p: p.write_bytes(b'not numpy at all'), 'is not a numpy file (damaged, or another'),
    (lambda p: (np.save(p, np.zeros((3, 8, 8, 1), np.uint8)),
                p.write_bytes(p.read_bytes()[:100])), 'Cannot read'),
], ids=['no_path', 'missing', 'folder', 'rgb', 'float', 'other_size', 'mnist_size',
        'channels_first', 'float_0_255', 'float_minus_1_1', 'float_nan', 'float_some_nan',
        'bool', 'int', 'empty', 'garbage', 'cut_short'])
def test_array_dataset_bad_inputs(tmp_path, make, message):
  path = tmp_path / 'images.npy'
  if make is not None:
    make(path)
  config = _array_config(path if make is not None else '')
  with pytest.raises(UserError, match=re.escape(message)):
    data.dataset_info(config)


def test_array_dataset_refuses_crop_and_tf_data(tmp_path):
  np.save(tmp_path / 'a.npy', np.zeros((3, 8, 8, 1), np.uint8))
  with pytest.raises(UserError, match='crop the images beforehand'):
    data.dataset_info(_array_config(tmp_path / 'a.npy', crop_size=4))
  with pytest.raises(UserError, match='read on the devices only'):
    next(data.create_train_iterator(_array_config(tmp_path / 'a.npy', batch_size=2, seed=0,
                                                  shuffle_buffer_size=4)))


def test_jsonl_writer_and_progress_round_trip(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path))
  progress = writers.ProgressLogger(10, writer=writer, every_steps=2)
  writer.write_hparams({'lr': 2e-4})
  for step in range(1, 5):
    with progress.timed('checkpoint'):
      pass
    progress(step)
    writer.write_scalars(step, {'d_loss': step / 10, 'g_loss': float('nan') if step == 3 else 1.})
  writer.write_images(4, {'samples': np.zeros((1, 4, 4, 1), np.uint8)})  # Ignored.
  writer.close()
  scalars = run_logs.read_scalars(tmp_path)
  np.testing.assert_array_equal(scalars['d_loss'][0], [1, 2, 3, 4])
  np.testing.assert_allclose(scalars['d_loss'][1], [0.1, 0.2, 0.3, 0.4])
  assert np.isnan(scalars['g_loss'][1][2])
  # The first call only starts the clock (it follows the compiling step), as clu's does.
  np.testing.assert_array_equal(scalars['steps_per_sec'][0], [2, 4])
  assert np.all(scalars['steps_per_sec'][1] > 0)
  assert json.loads((tmp_path / 'hparams.json').read_text()) == {'lr': 2e-4}
  # A line cut short by a killed run is skipped, the rest still reads.
  with open(tmp_path / writers.METRICS_JSONL, 'a', encoding='utf-8') as f:
    f.write('{"step": 5, "d_lo')
  assert list(run_logs.read_scalars(tmp_path)['d_loss'][0]) == [1, 2, 3, 4]
  # The resumed run's writer ends the cut line first, so its own first record is kept.
  resumed = writers.JsonlWriter(str(tmp_path))
  resumed.write_scalars(5, {'d_loss': 0.5})
  resumed.close()
  np.testing.assert_allclose(run_logs.read_scalars(tmp_path)['d_loss'][1], [.1, .2, .3, .4, .5])


def test_a_tensorflow_that_is_installed_but_broken_counts_as_absent(monkeypatch, caplog):
  """A CUDA or numpy clash makes `import tensorflow` fail: the run logs to metrics.jsonl, with
  one warning naming the error, instead of a traceback at its first TensorBoard write."""
  import importlib  # pylint: disable=g-import-not-at-top

  def broken(name, *args):
    if name == 'tensorflow':
      raise ImportError('numpy.core.multiarray failed to import')
    return real(name, *args)

  real = importlib.import_module
  monkeypatch.setattr(importlib, 'import_module', broken)
  with caplog.at_level('WARNING'):
    assert not writers.have_tensorflow.__wrapped__()
  assert ('TensorFlow is installed but does not import (ImportError: numpy.core.multiarray '
          'failed to import)') in caplog.text
  monkeypatch.setattr(importlib, 'import_module', real)
  assert writers.have_tensorflow.__wrapped__()  # This test machine's own TensorFlow imports.


def _run(workdir, array_path, steps):
  flags = ['--config=configs/default.py', f'--workdir={workdir}', '--config.dataset=array',
           f'--config.dataset_path={array_path}', '--config.image_size=8',
           '--config.generator_width=8', '--config.discriminator_width=8',
           '--config.latent_dim=8', '--config.batch_size=16', f'--config.num_train_steps={steps}',
           '--config.log_every_steps=2', '--config.checkpoint_every_steps=2',
           '--config.sample_every_steps=2', '--config.num_sample_images=4']
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2 '
             + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''))
  return subprocess.run([sys.executable, str(RUNNER), '-m', 'dcgan_jax.main', *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_runs_and_resumes_without_tensorflow(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  workdir = tmp_path / 'run'
  proc = _run(workdir, tmp_path / 'images.npy', 4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Without TensorFlow, scalars go to' in proc.stderr
  assert not list(workdir.glob('events.out.tfevents*'))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
  assert (workdir / 'samples' / 'step_000004.png').is_file()
  assert (workdir / 'samples' / 'progress.gif').is_file()
  hparams = json.loads((workdir / 'hparams.json').read_text())
  assert hparams['dataset'] == 'array' and hparams['resolved_num_train_steps'] == 4
  # Extended to 6 steps: resumes at 4 and appends to the same metrics.jsonl.
  proc = _run(workdir, tmp_path / 'images.npy', 6)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 4' in proc.stderr
  scalars = run_logs.read_scalars(workdir)
  from test_readme import readme_scalar_tags  # pylint: disable=g-import-not-at-top
  assert set(scalars) <= readme_scalar_tags(), set(scalars) - readme_scalar_tags()
  for tag in ('d_loss', 'g_loss', 'd_real', 'g_learning_rate', 'img_per_sec'):
    np.testing.assert_array_equal(scalars[tag][0], [2, 4, 6])
    assert np.all(np.isfinite(scalars[tag][1]))
