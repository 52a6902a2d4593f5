"""Tests of the model summary, the sampling / latent-walk CLI, the progress animation and the
linear-probe CLI.

One tiny training run (8x8 digits, width 8, 4 steps) is shared by the whole module; the sample
and probe CLIs then run on its checkpoint in-process (sample once as a subprocess too).
"""
import errno
import json
import math
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageSequence

from dcgan_jax import animation
from dcgan_jax import config_files
from dcgan_jax import probe
from dcgan_jax import sample
from dcgan_jax import sample_grid
from dcgan_jax import summary
from dcgan_jax.errors import EXIT_USER_ERROR, UserError

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PAD = sample.GRID_PADDING


def load_config(name='default'):
  return config_files.load_config(_ROOT / 'configs' / f'{name}.py')


def grid_size(rows, columns, side):
  """(width, height) in pixels of a grid with GRID_PADDING around and between the images."""
  return columns * (side + _PAD) + _PAD, rows * (side + _PAD) + _PAD


# ---- summary --------------------------------------------------------------------------------


def _shapes(rows, kind):
  return [r.output_shape for r in rows if r.kind == kind]


@pytest.mark.parametrize('size', [32, 64, 128])
@pytest.mark.parametrize('upsample', ['transpose', 'resize_conv'])
def test_summary_shapes_follow_the_shape_arithmetic(size, upsample):
  config = load_config()
  config.update(dict(image_size=size, channels=3, upsample=upsample))
  k = int(math.log2(size // 4))
  z = jax.ShapeDtypeStruct((1, config.latent_dim), jnp.float32)
  g_rows = summary.layer_rows(summary.models.generator_from_config(config), z)
  up_kind = 'TransposedConv' if upsample == 'transpose' else 'ResizeConv'
  # G: 4x4 after the projection (its BN), then k doublings to the image size.
  g_sides = [s[1] for s in _shapes(g_rows, 'BatchNorm')[:1]] + [s[1] for s in
                                                               _shapes(g_rows, up_kind)]
  assert g_sides == [4 * 2**i for i in range(k + 1)]
  assert g_rows[-1].output_shape == (1, size, size, 3)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  d_rows = summary.layer_rows(summary.models.discriminator_from_config(config), images)
  # D: k halvings from size to 4, then the 4x4 VALID conv (a WholeMapConv) to a 1x1 logit.
  assert [s[1] for s in _shapes(d_rows, 'Conv')] == [size // 2**i for i in range(1, k + 1)]
  assert _shapes(d_rows, 'WholeMapConv') == [(1, 1, 1, 1)]
  assert d_rows[-1].output_shape == (1,)
  text = summary.summarize(config)
  assert f'log2({size}/4) = {k}' in text
  assert f'(1, {size}, {size}, 3)' in text


def test_summary_totals_match_the_paper_model():
  config = load_config()
  config.update(dict(image_size=64, channels=3, generator_width=64, discriminator_width=64,
                     upsample='transpose'))
  text = summary.summarize(config)
  assert 'Total params: 3,576,704' in text
  assert 'Total params: 2,765,568' in text
  assert 'G 3,576,704 + D 2,765,568 = 6,342,272' in text
  # The state: float32 parameters with Adam's two moments (3 x 4 bytes each), G's EMA copy
  # (4 bytes per G parameter), BatchNorm statistics (small) on top.
  for ema_decay, ema_words in ((0.0, ''), (0.999, ', EMA of G')):
    config.ema_decay = ema_decay
    line = next(line for line in summary.summarize(config).splitlines()
                if line.startswith('Train state: '))
    mib = float(re.match(r'Train state: ([\d.]+) MiB', line).group(1))
    expected = (12 * 6_342_272 + (4 * 3_576_704 if ema_decay else 0)) / 2**20
    assert abs(mib - expected) < 0.01 * expected, line  # Shown to 3 digits.
    assert f'normalisation statistics{ema_words}; per device' in line


@pytest.mark.parametrize('norm,d_params', [('batch', 2_765_568), ('layer', 2_765_568),
                                            ('spectral', 2_765_568 - 1_792),
                                            ('none', 2_765_568 - 1_792)])
def test_summary_counts_each_discriminator_norm(norm, d_params):
  """LayerNorm has BatchNorm's per-channel scale and offset (2 x (128 + 256 + 512) = 1,792);
  spectral norm adds no trainable parameters."""
  config = load_config()
  config.update(dict(image_size=64, channels=3, discriminator_width=64,
                     discriminator_norm=norm))
  text = summary.summarize(config)
  assert f'Discriminator (width 64, {norm} norm)' in text
  assert f'Total params: {d_params:,}' in text
  kinds = {'batch': 'GroupedBatchNorm', 'layer': 'LayerNorm'}
  if norm in kinds:
    assert text.count(f'({kinds[norm]})') == 3
  else:
    assert 'Norm)' not in text.split('Discriminator (')[1]


def test_summary_cli(capsys):
  summary.main(['summary', f'--config={_ROOT}/configs/default.py', '--config.image_size=16'])
  out = capsys.readouterr().out
  assert '(1, 16, 16, 1)' in out and 'log2(16/4) = 2' in out


def test_summary_cli_bad_size_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    summary.main(['summary', f'--config={_ROOT}/configs/default.py', '--config.image_size=48'])
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'image_size' in err


def test_summary_cli_misspelt_field_names_it_and_the_right_one(capsys):
  with pytest.raises(SystemExit) as exit_info:
    summary.main(['summary', f'--config={_ROOT}/configs/default.py', '--config.batch_sise=3'])
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert err == ("Unknown config field 'batch_sise' (--config.batch_sise); did you mean "
                 "'batch_size'? the valid fields are listed in configs/default.py.")
  # A name close to two fields names both (ml_collections' own guess gives one).
  with pytest.raises(SystemExit):
    summary.main(['summary', f'--config={_ROOT}/configs/default.py',
                  '--config.learning_rate=1e-3'])
  assert "did you mean 'g_learning_rate' or 'd_learning_rate'?" in capsys.readouterr().err


@pytest.mark.parametrize('module,flag', [(sample, '--help'), (summary, '-h'), (probe, '--help'),
                                         ('profiling', '--helpfull'), ('evaluate', '--help'),
                                         ('fid', '-h')])
def test_every_cli_answers_help_with_its_usage_and_flags(module, flag, capsys):
  """evaluate and fid printed their docstring and absl's "Try --helpfull", which listed none of
  their flags either, though their errors say "--help lists the flags"."""
  import importlib  # pylint: disable=g-import-not-at-top
  if isinstance(module, str):
    module = importlib.import_module(f'dcgan_jax.{module}')
  # evaluate and fid parse in app.run's flags_parser; the others in main.
  entry = module.parse_flags if module.__name__.endswith(('evaluate', 'fid')) else module.main
  with pytest.raises(SystemExit) as exit_info:
    entry(['prog', flag])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(module.__doc__.strip().splitlines()[0])  # The usage first.
  assert 'Flags:' in out and any(f'--{name}:' in out for name in ('workdir', 'config',
                                                                   'inception_weights'))


# ---- slerp ----------------------------------------------------------------------------------


def test_summary_of_a_run_reads_its_config(run_dir, tmp_path, capsys):
  """README lists summary under "Look at a run", but it read config files only: --workdir was
  an unknown flag and --config=<run>/config.json failed in ml_collections (NameError: 'true')."""
  summary.main(['summary', f'--workdir={run_dir}'])
  out = capsys.readouterr().out
  assert f'(1, {_SIDE}, {_SIDE}, 1)' in out and 'Train state:' in out
  for args, message in [
      ([f'--config={run_dir}/config.json'], "--config takes a Python config file (configs/*.py), "
                                            "not '%s/config.json'; for a run's config.json pass "
                                            "--workdir=<the run's folder>." % run_dir),
      ([f'--workdir={tmp_path}'], str(tmp_path)),
      ([f'--workdir={run_dir}', f'--config={_ROOT}/configs/default.py'],
       'Pass --config (a config file) or --workdir (a run), not both.'),
      ([], '--config or --workdir is required'),
      # A second run was dropped without a word (absl keeps the last flag; a positional was
      # ignored), as if summary compared runs.
      ([f'--workdir={run_dir}', f'--workdir={tmp_path}'],
       'summary describes one run; got --workdir 2 times. Run it once per run.'),
      ([f'--workdir={run_dir}', str(tmp_path)], f"Unexpected arguments '{tmp_path}'")]:
    with pytest.raises(SystemExit) as exit_info:
      summary.main(['summary'] + args)
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_slerp_ends_and_norms():
  a = jax.random.normal(jax.random.key(0), (3, 16))
  b = jax.random.normal(jax.random.key(1), (3, 16))
  path = sample.slerp(a, b, jnp.linspace(0.0, 1.0, 5))
  assert path.shape == (3, 5, 16)
  np.testing.assert_allclose(path[:, 0], a, atol=1e-5)
  np.testing.assert_allclose(path[:, -1], b, atol=1e-5)
  # Unlike a straight line, the midpoint does not shrink towards 0: it is longer than the chord's
  # midpoint, and for ends of equal norm the whole path stays on their sphere.
  mid, lerp_mid = jnp.linalg.norm(path[:, 2], axis=-1), jnp.linalg.norm((a + b) / 2, axis=-1)
  assert bool(jnp.all(mid > lerp_mid))
  b_same_norm = b * jnp.linalg.norm(a, axis=-1, keepdims=True) / jnp.linalg.norm(b, axis=-1,
                                                                              keepdims=True)
  norms = jnp.linalg.norm(sample.slerp(a, b_same_norm, jnp.linspace(0.0, 1.0, 7)), axis=-1)
  np.testing.assert_allclose(norms, jnp.broadcast_to(jnp.linalg.norm(a, axis=-1)[:, None],
                                                     norms.shape), rtol=1e-4)
  same = sample.slerp(a, a, jnp.linspace(0.0, 1.0, 3))  # Parallel ends: no NaN.
  np.testing.assert_allclose(same[:, 1], a, atol=1e-5)


def test_slerp_between_opposite_points_turns_half_a_circle():
  a = jax.random.normal(jax.random.key(2), (3, 16))
  t = jnp.linspace(0.0, 1.0, 9)
  path = sample.slerp(a, -2.0 * a, t)  # z to -2z: any great circle joins them.
  assert bool(jnp.all(jnp.isfinite(path)))
  np.testing.assert_allclose(path[:, 0], a, atol=1e-5)
  np.testing.assert_allclose(path[:, -1], -2.0 * a, atol=1e-5)
  # Never through the origin (the straight line's midpoint): the norm grows linearly from |a|
  # to 2|a|, and the angle from a grows by pi/8 a step.
  a_norm = jnp.linalg.norm(a, axis=-1)
  np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1),
                             a_norm[:, None] * (1.0 + t[None, :]), rtol=1e-5)
  cosines = jnp.sum(path * a[:, None, :], axis=-1) / (jnp.linalg.norm(path, axis=-1)
                                                      * a_norm[:, None])
  np.testing.assert_allclose(cosines, jnp.broadcast_to(jnp.cos(jnp.pi * t), cosines.shape),
                             atol=1e-5)
  # One plane per walk: every point is a mix of a and one direction perpendicular to a.
  middle = path[:, 4] / jnp.linalg.norm(path[:, 4], axis=-1, keepdims=True)
  np.testing.assert_allclose(jnp.sum(middle * a, axis=-1), 0.0, atol=1e-5)
  # Nearly opposite ends: the textbook weights divide by sin(omega) ~ 1e-4 (norms of thousands).
  b = -a + 1e-4 * jax.random.normal(jax.random.key(3), a.shape)
  near = sample.slerp(a, b, t)
  np.testing.assert_allclose(near[:, -1], b, atol=1e-5)
  b_norm = jnp.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(jnp.linalg.norm(near, axis=-1),
                             (1 - t[None, :]) * a_norm[:, None] + t[None, :] * b_norm[:, None],
                             rtol=1e-5)


# ---- a tiny run, then sampling ----------------------------------------------------------------

_SIDE = 8
_SAMPLE_STEPS = [2, 4]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A 4-step 8x8 digits run with checkpoints and sample grids at steps 2 and 4."""
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp('run')
  config = load_config()
  config.update(dict(
      data_dir=str(tmp_path_factory.mktemp('tfds')), image_size=_SIDE, generator_width=8,
      discriminator_width=8, latent_dim=8, batch_size=16, num_train_steps=4, log_every_steps=2,
      checkpoint_every_steps=2, sample_every_steps=2, quality_every_steps=0,
      num_sample_images=6, keep_checkpoints=3,
      # Large steps and a short EMA, so that the grids of steps 2 and 4 differ visibly.
      g_learning_rate=2e-2, d_learning_rate=2e-2, ema_decay=0.5))
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_training_writes_the_progress_animation(run_dir):
  pngs = animation.step_pngs(run_dir / 'samples')
  assert [int(pathlib.Path(p).stem.split('_')[1]) for p in pngs] == _SAMPLE_STEPS
  grids = [np.asarray(Image.open(p)) for p in pngs]
  assert not np.array_equal(grids[0], grids[-1])  # (PIL merges identical frames.)
  with Image.open(run_dir / 'samples' / animation.PROGRESS_GIF) as gif:
    assert gif.n_frames == len(pngs)
    assert gif.size == Image.open(pngs[-1]).size


def test_the_progress_animation_ends_at_the_runs_final_step(tmp_path):
  """A grid of a later step than the run's last (an earlier, longer run's) is no frame."""
  for step, value in ((2, 0), (4, 120), (6, 240)):
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / f'step_{step:06d}.png')
  with Image.open(animation.write_progress_gif(tmp_path, last_step=4)) as gif:
    assert gif.n_frames == 2
  with Image.open(animation.write_progress_gif(tmp_path)) as gif:
    assert gif.n_frames == 3


def test_sample_grid_in_process(run_dir, tmp_path, capsys):
  out = tmp_path / 'grid.png'
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={out}', '--seed=3'])
  assert capsys.readouterr().out.strip().endswith(f'Wrote {out}.')
  # Written again: the earlier grid is replaced, and the line says so.
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={out}', '--seed=3'])
  assert capsys.readouterr().out.strip().endswith(f'Wrote {out} (replacing the earlier {out}).')
  with Image.open(out) as image:
    assert image.size == grid_size(rows=3, columns=4, side=_SIDE)  # ceil(sqrt(10)) = 4 columns.
    first = np.asarray(image)
  # Another seed gives other samples; an older step (--step) and G's own weights work too.
  again = tmp_path / 'again.png'
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={again}', '--seed=4',
               '--step=2', '--noema'])
  assert not np.array_equal(first, np.asarray(Image.open(again)))


def test_sample_files_are_the_grids_images(run_dir, tmp_path):
  """--out_dir writes each sample as its own PNG: tiled again, they are the grid of the same
  --num and --seed, pixel for pixel."""
  grid_path, out_dir = tmp_path / 'grid.png', tmp_path / 'files' / 'nested'
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={grid_path}', '--seed=3'])
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out_dir={out_dir}', '--seed=3'])
  names = sorted(os.listdir(out_dir))
  assert names == [f'{i:06d}.png' for i in range(10)]
  files = [np.asarray(Image.open(out_dir / name)) for name in names]
  assert all(f.shape == (_SIDE, _SIDE) and f.dtype == np.uint8 for f in files)
  tiled = sample_grid.make_grid(np.stack(files)[..., None], padding=sample.GRID_PADDING)
  np.testing.assert_array_equal(tiled[..., 0], np.asarray(Image.open(grid_path)))
  assert len({f.tobytes() for f in files}) == 10  # Ten different samples.


@pytest.mark.parametrize('args,message', [
    (['--out_dir={t}/full'], 'is not empty'),
    (['--out_dir={t}/full/kept.txt'], 'is a file'),
    (['--out_dir={t}/new', '--num=0'], '--num must be between 1 and 1,000,000'),
    (['--out_dir={t}/new', '--interpolate'], 'cannot be combined with --interpolate'),
    # --out is a PNG and --gif_out a GIF: --out=walk.gif made both the same file, the grid lost.
    (['--interpolate', '--out={t}/new.gif'], 'is written as PNG; give a name ending in .png'),
    (['--interpolate', '--out={t}/w.png', '--gif_out={t}/w.png'], 'ending in .gif'),
    (['--out={t}/new.jpg'], 'new.jpg: the file is written as PNG'),
    (['--out={t}/new/'], "names no file; give a file name such as samples.png"),
    # A file on the path: it was said not to exist.
    (['--out={t}/full/kept.txt/grid.png'], 'kept.txt is a file, not a folder; give a path in a '
                                           'folder'),
    (['--out='], "--out '' names no file"),
    (['--out={t}/pipe.png'], 'is not a regular file (a device or pipe)'),
    (['--out={t}/grid.png', '--out_dir={t}/new'], '--out names the grid file, and --out_dir '
                                                  'writes separate files instead'),
    (['--gif_out={t}/new.gif'], '--gif_out applies to --interpolate only'),
])
def test_sample_files_mistakes_touch_nothing(run_dir, tmp_path, capsys, args, message):
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'kept.txt').write_text('earlier work')
  os.mkfifo(tmp_path / 'pipe.png')  # Was replaced by a regular file (as /dev/null would be).
  with pytest.raises(SystemExit) as exit_info:
    sample.main(['sample', f'--workdir={run_dir}'] + [a.format(t=tmp_path) for a in args])
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert os.listdir(tmp_path / 'full') == ['kept.txt']
  assert (tmp_path / 'full' / 'kept.txt').read_text() == 'earlier work'
  assert not (tmp_path / 'new').exists()
  assert sorted(os.listdir(tmp_path)) == ['full', 'pipe.png']
  assert stat.S_ISFIFO(os.stat(tmp_path / 'pipe.png').st_mode)


def test_sample_files_on_a_full_disk_is_one_line_naming_the_file(run_dir, tmp_path, monkeypatch,
                                                                 capsys):
  """PIL's failed write names no file: the line said 'Cannot write the output', and advised
  a writable path for a full disk."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  save, calls = PILImage.Image.save, []

  def full_disk_at_the_third(self, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(self, path, *args, **kwargs)

  monkeypatch.setattr(PILImage.Image, 'save', full_disk_at_the_third)
  with pytest.raises(SystemExit) as exit_info:
    sample.main(['sample', f'--workdir={run_dir}', f'--out_dir={tmp_path / "files"}', '--num=6'])
  assert exit_info.value.code == EXIT_USER_ERROR
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f'Cannot write {tmp_path / "files" / "000002.png"} (No space left on device); free some '
      'disk space (or raise the quota or file-size limit).')
  assert sorted(os.listdir(tmp_path / 'files')) == ['000000.png', '000001.png']


def test_sample_files_stopped_midway_leave_only_whole_files(run_dir, tmp_path, monkeypatch):
  """Ctrl-C (or a full disk) while a file is written: no half PNG is left for a FID tool."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top
  save, calls = PILImage.Image.save, []

  def save_three_then_stop(self, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 4:
      with open(path, 'wb') as f:
        f.write(b'\x89PNG half')  # What an interrupted write leaves.
      raise KeyboardInterrupt
    return save(self, path, *args, **kwargs)

  monkeypatch.setattr(PILImage.Image, 'save', save_three_then_stop)
  with pytest.raises(KeyboardInterrupt):
    sample.sample_files(str(run_dir), str(tmp_path / 'files'), num=6)
  assert sorted(os.listdir(tmp_path / 'files')) == ['000000.png', '000001.png', '000002.png']
  for name in os.listdir(tmp_path / 'files'):
    with PILImage.open(tmp_path / 'files' / name) as image:
      image.load()


def test_interpolation_in_process(run_dir, tmp_path):
  out = tmp_path / 'walk.png'
  sample.main(['sample', f'--workdir={run_dir}', '--interpolate', '--rows=3', '--steps=5',
               f'--out={out}', '--nobounce'])
  with Image.open(out) as image:
    assert image.size == grid_size(rows=3, columns=5, side=_SIDE)
  with Image.open(tmp_path / 'walk.gif') as gif:
    frames = [np.asarray(f.convert('L')) for f in ImageSequence.Iterator(gif)]
  assert len(frames) == 5
  # Each frame is the grid of the 3 walks at one step: 2 columns x 2 rows.
  assert frames[0].shape[::-1] == grid_size(rows=2, columns=2, side=_SIDE)
  assert not np.array_equal(frames[0], frames[-1])


@pytest.mark.slow
def test_interpolation_subprocess_bounces(run_dir, tmp_path):
  out, gif = tmp_path / 'walk.png', tmp_path / 'loop.gif'
  result = subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.sample', f'--workdir={run_dir}', '--interpolate',
       '--rows=2', '--steps=4', f'--out={out}', f'--gif_out={gif}'],
      cwd=_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  # orbax's note that the run was opened read-only (one per checkpoint) is not shown.
  assert 'read only' not in result.stderr, result.stderr[-2000:]
  assert Image.open(out).size == grid_size(rows=2, columns=4, side=_SIDE)
  with Image.open(gif) as animated:
    assert animated.n_frames == 2 * 4 - 2  # Forward 4, back 2 (ends not repeated).


@pytest.mark.slow
def test_sample_falls_back_from_a_damaged_checkpoint_in_one_warning(run_dir, tmp_path):
  """The reads the failed restore abandoned called back into orbax's closed event loop: ~170
  "RuntimeError: Event loop is closed" tracebacks around the fallback's one warning (a
  read-only opening had no filter for them; training's did)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  for path in (workdir / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'garbage')
  out = tmp_path / 'grid.png'
  result = subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.sample', f'--workdir={workdir}', f'--out={out}'],
      cwd=_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'checkpoint of step 4' in result.stderr and 'falling back' in result.stderr
  assert 'Traceback' not in result.stderr and 'Event loop' not in result.stderr, (
      result.stderr[-2000:])
  assert Image.open(out).size[0] > 0


def test_fewer_samples_are_the_first_of_more(run_dir, tmp_path):
  """README: a smaller --num gives the first images of a larger one (each latent's numbers
  depend on its position, not on how many are drawn: JAX's partitionable threefry)."""
  for truncation in (0.0, 0.7):
    few = sample.latents(jax.random.key(3), (16, 8), truncation)
    many = sample.latents(jax.random.key(3), (300, 8), truncation)
    np.testing.assert_array_equal(np.asarray(few), np.asarray(many)[:16])
  few = sample.sample_files(str(run_dir), str(tmp_path / 'few'), num=2)
  many = sample.sample_files(str(run_dir), str(tmp_path / 'many'), num=5)
  for a, b in zip(few, many):
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_truncated_latents_stay_within_the_bound(run_dir, tmp_path):
  z = sample.latents(jax.random.key(0), (4000, 8), truncation=0.5)
  assert float(jnp.max(jnp.abs(z))) <= 0.5
  assert 0.25 < float(jnp.std(z)) < 0.3  # The N(0,1) truncated to [-0.5, 0.5]: std 0.28.
  plain = sample.latents(jax.random.key(0), (4000, 8))
  assert float(jnp.max(jnp.abs(plain))) > 3  # Untruncated by default.
  # A grid with truncation: other latents, other images; the files mode draws the same ones.
  grid = sample.sample_grid_png(str(run_dir), str(tmp_path / 'a.png'), num=4, truncation=0.5)
  assert not np.array_equal(grid, sample.sample_grid_png(str(run_dir), str(tmp_path / 'b.png'),
                                                         num=4))
  paths = sample.sample_files(str(run_dir), str(tmp_path / 'files'), num=4, truncation=0.5)
  tiled = sample_grid.make_grid(np.stack([np.asarray(Image.open(p)) for p in paths])[..., None],
                                padding=sample.GRID_PADDING)
  np.testing.assert_array_equal(tiled, grid)


def _cell(grid, row, column, side=_SIDE):
  top, left = _PAD + row * (side + _PAD), _PAD + column * (side + _PAD)
  return grid[top:top + side, left:left + side]


@pytest.mark.parametrize('expression,terms', [
    ('3,17,22 - 5,9,40 + 11,30,61', [(1, [3, 17, 22]), (-1, [5, 9, 40]), (1, [11, 30, 61])]),
    (' -1 + 2,3 ', [(-1, [1]), (1, [2, 3])]),
    ('+0', [(1, [0])]),
    ('7', [(1, [7])]),
])
def test_parse_arithmetic(expression, terms):
  assert sample.parse_arithmetic(expression, 64) == terms


@pytest.mark.parametrize('expression,message', [
    ('', 'is empty'), ('  ', 'is empty'), ('3,,4', "group '3,,4'"), ('3 ++ 4', "group ''"),
    ('3 -', "group ''"), ('3 * 4', "group '3*4'"), ('a,b', "group 'a,b'"),
    ('1 - 64', 'index 64 is outside the grid of --num=64 samples (indices 0..63'),
    ('1 2 - 3', 'has a space between two digits'),  # Was read as 12 - 3.
    ('\u00b2', "group '\u00b2'"),  # A superscript two: isdigit() but not int(): a traceback.
])
def test_parse_arithmetic_mistakes(expression, message):
  with pytest.raises(UserError, match=re.escape(message)):
    sample.parse_arithmetic(expression, 64)


def test_latent_arithmetic_averages_groups_and_adds_them(run_dir, tmp_path):
  """The grid's cells are the chosen samples, their groups' mean latents, the result and its
  noisy variations; every latent is the one of the sample grid with the same --num/--seed."""
  grid_path, out = tmp_path / 'grid.png', tmp_path / 'arithmetic.png'
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={grid_path}', '--seed=3'])
  sample.main(['sample', f'--workdir={run_dir}', '--num=10', f'--out={out}', '--seed=3',
               '--arithmetic=0,1 - 2 + 3,4,5'])
  picked, grid = np.asarray(Image.open(grid_path)), np.asarray(Image.open(out))
  # 3 groups + the result row; the widest group (3) + its mean: 4 columns.
  assert grid.shape[::-1] == grid_size(rows=4, columns=4, side=_SIDE)
  for row, indices in enumerate([[0, 1], [2], [3, 4, 5]]):
    for column, index in enumerate(indices):  # The chosen samples, as in the grid (4 columns).
      np.testing.assert_array_equal(_cell(grid, row, column), _cell(picked, *divmod(index, 4)))
    for column in range(len(indices), 3):  # Blank cells: black, like the padding.
      assert not _cell(grid, row, column).any()
  generator, variables, config, _ = sample.load_generator(str(run_dir))
  z = sample.latents(jax.random.key(3), (10, int(config.latent_dim)))
  means = [z[:2].mean(0), z[2], z[3:6].mean(0)]
  result = means[0] - means[1] + means[2]
  expected = sample_grid.to_uint8(
      sample.generate(generator, variables, jnp.stack(means + [result])))
  for row in range(3):
    np.testing.assert_array_equal(_cell(grid, row, 3), expected[row, ..., 0])
  np.testing.assert_array_equal(_cell(grid, 3, 0), expected[3, ..., 0])
  variations = [_cell(grid, 3, c) for c in range(1, 4)]
  assert all(not np.array_equal(v, _cell(grid, 3, 0)) for v in variations)
  # Without noise, the variations are the result itself; the function returns its latent.
  quiet, latent = sample.latent_arithmetic(str(run_dir), str(tmp_path / 'q.png'),
                                           '0,1 - 2 + 3,4,5', num=10, seed=3, noise=0.0)
  np.testing.assert_allclose(latent, result, atol=1e-6)
  for c in range(1, 4):
    np.testing.assert_array_equal(_cell(quiet, 3, c), _cell(quiet, 3, 0))


@pytest.mark.parametrize('args,message', [
    (['--num=0'], '--num'),
    (['--interpolate', '--steps=1'], '--steps'),
    (['--truncation=-1'], '--truncation must be 0 (off) or a positive bound'),
    (['--arithmetic=1 - 99'], 'index 99 is outside the grid of --num=64'),
    (['--arithmetic=1 -'], 'is not a list of sample indices'),
    (['--arithmetic=1', '--arithmetic_noise=-1'], '--arithmetic_noise must be >= 0'),
    (['--arithmetic=1', '--interpolate'], 'cannot be combined with --interpolate or --out_dir'),
    (['--arithmetic=1', '--label=1'], 'class-conditional'),
    # Flags of another way of sampling did nothing: --steps=150 (for --step) sampled step 4.
    (['--steps=150'], '--steps applies to --interpolate only, which this command does not ask '
                      'for (to sample the checkpoint of a step, --step=N)'),
    (['--rows=2'], '--rows applies to --interpolate only'),
    (['--nobounce'], '--bounce applies to --interpolate only'),
    (['--interpolate', '--num=16'], '--num does not apply to --interpolate'),
    (['--arithmetic_noise=0.1'], '--arithmetic_noise applies to --arithmetic only'),
    (['--num=5000'], 'for a grid (got 5000); --out_dir writes up to 1,000,000 separate files'),
])
def test_sample_bad_flags_are_one_line(run_dir, tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    sample.main(['sample', f'--workdir={run_dir}', f'--out={tmp_path}/x.png'] + args)
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err
  assert not os.path.exists(tmp_path / 'x.png')


def test_sample_without_checkpoint_subprocess(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.sample', f'--workdir={tmp_path}', '--num=4',
       f'--out={tmp_path}/x.png'],
      cwd=_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == EXIT_USER_ERROR
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert 'checkpoint' in result.stderr or 'config' in result.stderr


# ---- linear probe of D -----------------------------------------------------------------------


def test_probe_cli_scores_d_and_its_anchors_on_held_out_digits(run_dir, capsys):
  probe.main(['probe', f'--workdir={run_dir}', '--max_train_examples=400',
              '--max_test_examples=150', '--l2=auto', '--seed=1'])
  out = capsys.readouterr().out
  assert 'held out 0.2, seed 1' in out and '400 images' in out and '150 images' in out
  result = json.loads((run_dir / 'probe_step_000004.json').read_text())
  assert [row['features'] for row in result['rows']] == [
      'D, step 4', 'D, random init (seed 1)', 'pixels']
  # 8x8 images: D's one block is a 4x4x8 map (128 features); the pixels are 64.
  assert [row['dim'] for row in result['rows']] == [128, 128, 64]
  p = result['protocol']
  assert (p['num_train'], p['num_test'], p['num_classes']) == (400, 150, 10)
  for row in result['rows']:
    assert row['l2'] in p['l2_grid'] and len(row['validation_accuracy']) == len(p['l2_grid'])
    assert row['features'] in out and f"{row['test_accuracy']:.4f}" in out
    assert row['test_accuracy'] > 0.5  # Ten classes: chance is 0.1.


def test_probe_on_a_full_disk_gives_its_accuracies_in_one_line(run_dir, monkeypatch, capsys):
  """The result file that could not be written ended the probe with a traceback, its
  accuracies lost."""
  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(pathlib.Path, 'write_text', full_disk)
  before = sorted(p.name for p in run_dir.iterdir())
  with pytest.raises(SystemExit) as exit_info:
    probe.main(['probe', f'--workdir={run_dir}', '--max_train_examples=100',
                '--max_test_examples=50', '--l2=1', '--nobaselines', '--step=2'])
  assert exit_info.value.code == EXIT_USER_ERROR
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert re.fullmatch(
      re.escape(f'Could not write {run_dir / "probe_step_000002.json"} (No space left on '
                'device); free some disk space (or raise the quota or file-size limit) and run '
                'again. The test accuracies, which are not saved: D, step 2 ') + r'0\.\d{4}\.',
      line), line
  assert sorted(p.name for p in run_dir.iterdir()) == before


@pytest.mark.parametrize('args,message', [
    (['--dataset=array', '--dataset_path={t}/unlabelled.npy'],
     'has no class labels, which a linear probe needs'),
    (['--test_split=validation'], "Split 'validation' is not available for dataset 'digits'"),
    (['--l2=none'], "--l2 must be 'auto' or a positive penalty"),
    (['--grid=3'], '--grid must be 1, 2 or 4'),
    (['--test_fraction=1'], '--test_fraction must be between 0 and 1'),
    (['--dataset_path={t}/unlabelled.npy'], '--dataset_path needs --dataset'),
])
def test_probe_mistakes_are_one_line_and_write_nothing(run_dir, tmp_path, capsys, args, message):
  np.save(tmp_path / 'unlabelled.npy', np.zeros((4, _SIDE, _SIDE, 1), np.uint8))
  before = sorted(p.name for p in run_dir.iterdir())
  with pytest.raises(SystemExit) as exit_info:
    probe.main(['probe', f'--workdir={run_dir}'] + [a.format(t=tmp_path) for a in args])
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert sorted(p.name for p in run_dir.iterdir()) == before


# ---- the README's "build your own GAN" example ------------------------------------------------


@pytest.mark.slow
def test_custom_gan_example_runs(capsys):
  import runpy  # pylint: disable=g-import-not-at-top

  namespace = runpy.run_path(str(_ROOT / 'experiments' / 'custom_gan_example.py'),
                             run_name='custom_gan_example')
  state, samples = namespace['main']()  # What `python experiments/custom_gan_example.py` runs.
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(':')[0] for line in lines[:3]] == ['step 1', 'step 2', 'step 3']
  assert lines[-1] == 'samples (4, 8, 8, 1)'
  assert int(state.step) == 3
  assert np.all(np.isfinite(samples)) and np.all(np.abs(samples) <= 1.0)


def test_readme_snippet_that_loads_a_run_runs_as_written(run_dir):
  """README, "Look at a run": a run's generator from Python."""
  import re  # pylint: disable=g-import-not-at-top
  text = (_ROOT / 'README.md').read_text()
  section = text[text.index('## Look at a run'):text.index('## Evaluation')]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  namespace = {}
  exec(compile(code.replace('/tmp/dcgan_digits', str(run_dir)), 'README.md', 'exec'),  # pylint: disable=exec-used
       namespace)
  assert namespace['step'] == 4
  assert namespace['images'].shape == (16, _SIDE, _SIDE, 1)
  assert np.all(np.abs(namespace['images']) <= 1.0)


def test_a_custom_loops_checkpoints_are_not_taken_for_a_run(tmp_path, capsys):
  """Saved with checkpointing.Checkpointer and a config of the user's own: one clear error that
  says how to restore them, not an AttributeError for the first model field."""
  from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  with checkpointing.Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(3, {'w': np.zeros(2, np.float32)}, {'learning_rate': 0.1}, force=True)
  with pytest.raises(UserError, match=r'lacks image_size, channels, latent_dim, generator_width, '
                                      r'discriminator_width: not a run of the training program.*'
                                      r'Checkpointer\(workdir\)\.restore\(target\)'):
    sample.load_generator(tmp_path)
  # summary --workdir too (it ended in AttributeError: 'image_size', a traceback).
  with pytest.raises(SystemExit) as exit_info:
    summary.main(['summary', f'--workdir={tmp_path}'])
  assert exit_info.value.code == EXIT_USER_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'not a run of the training program' in err, err


def test_written_outputs_have_the_permissions_of_any_new_file(tmp_path):
  """Written through tempfile (0600) and renamed: samples, GIFs and config.json were readable by
  their owner alone, unlike the event files and quality.json beside them."""
  import stat  # pylint: disable=g-import-not-at-top
  from dcgan_jax import checkpointing, json_files  # pylint: disable=g-import-not-at-top
  image = np.zeros((4, 4, 3), np.uint8)
  sample_grid.save_png(image, tmp_path / 'grid.png')
  animation.save_gif([image, image], tmp_path / 'walk.gif')
  checkpointing.save_config_json(tmp_path, {'seed': 0})
  expected = 0o666 & ~json_files._UMASK  # pylint: disable=protected-access
  for name in ('grid.png', 'walk.gif', 'config.json'):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name
  assert expected != 0o600  # The test process's umask is the usual 022 (or 002).


def test_generate_compiles_once_and_refuses_latents_that_are_not_float_vectors():
  """Integer latents were used as they were (a few distinct values, not Gaussian draws)."""
  from dcgan_jax import Generator  # pylint: disable=g-import-not-at-top
  generator = Generator(image_size=8, channels=1, latent_dim=4, width=4)
  variables = generator.init(jax.random.key(0), jnp.zeros((1, 4)), train=False)
  z = sample.latents(jax.random.key(1), (3, 4))
  assert sample.generate(generator, variables, z).shape == (3, 8, 8, 1)
  # Compiled once per generator (each call compiled anew: ~0.6 s each in a notebook loop).
  same = Generator(image_size=8, channels=1, latent_dim=4, width=4)
  cached = sample._local_generator  # pylint: disable=protected-access
  assert cached(same) is cached(generator)
  assert cached(generator.clone(width=8)) is not cached(generator)
  # On every local device (tests/conftest.py gives 8), the images one device makes.
  assert cached(generator).num_devices == jax.local_device_count() == 8
  one_device = jax.jit(lambda v, z: generator.apply(v, z, train=False))
  np.testing.assert_array_equal(sample.generate(generator, variables, z),
                                np.asarray(one_device(variables, z)))
  for bad, shown in [(jnp.ones((3, 4), jnp.int32), 'int32 (3, 4)'),
                     (jnp.zeros((3, 5)), 'float32 (3, 5)'), (jnp.zeros((4,)), 'float32 (4,)')]:
    with pytest.raises(UserError, match=re.escape(f'z must be floating latents of shape [N, 4] '
                                                  f'(e.g. from sample.latents), got {shown}.')):
      sample.generate(generator, variables, bad)
  with pytest.raises(UserError, match=r'z holds no latents'):  # Was numpy's concatenate error.
    sample.generate(generator, variables, jnp.zeros((0, 4)))


def test_generate_refuses_classes_the_model_does_not_have():
  """A class outside the one-hot range is all zeros there: an image of no class, silently."""
  from dcgan_jax import Generator  # pylint: disable=g-import-not-at-top
  generator = Generator(image_size=8, channels=1, latent_dim=4, width=4, num_classes=3)
  z = sample.latents(jax.random.key(1), (3, 4))
  labels = np.array([0, 1, 2])
  variables = generator.init(jax.random.key(0), z, labels=labels, train=False)
  assert sample.generate(generator, variables, z, labels).shape == (3, 8, 8, 1)
  for bad, shown in [(np.array([0, 1, 3]), 'int64 (3,) with values 0..3'),
                     (np.array([-1, 0, 1]), 'int64 (3,) with values -1..1'),
                     (np.array([0, 1]), 'int64 (2,) with values 0..1'),
                     (np.array([0.0, 1.0, 2.0]), 'float64 (3,) with values 0.0..2.0')]:
    with pytest.raises(UserError, match=re.escape(
        f'labels must be integer classes [3] in 0..2, one per latent; got {shown}.')):
      sample.generate(generator, variables, z, bad)
