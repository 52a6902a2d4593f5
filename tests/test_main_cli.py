"""The command line, run as users run it: ``python -m dcgan_jax.main --config=... --workdir=...``.

Its help, a run split over two processes, and two processes stopping together at a
non-finite loss and when process 0 cannot write a file. What a mistake on the command line
does (exit status 2, one line, nothing written) is pinned down row by row in
tests/test_bad_inputs.py.
"""
import contextlib
import json
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_help_lists_the_flags():
  result = subprocess.run([sys.executable, '-m', 'dcgan_jax.main', '--helpshort'], cwd=_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert 'Traceback' not in result.stderr
  assert '--workdir' in result.stdout and '--config' in result.stdout
  assert result.returncode == 0  # As the other programs' --help (absl's own exits with 1).
  short = subprocess.run([sys.executable, '-m', 'dcgan_jax.main', '-h'], cwd=_ROOT,
                         capture_output=True, text=True, timeout=120)
  assert short.returncode == 0 and '--workdir' in short.stdout  # absl knew no -h.


def test_a_boolean_flag_spelt_with_no_underscore_is_told_absl_spelling():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from dcgan_jax import command_line  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  flags.DEFINE_bool('ema', True, 'EMA weights.', flag_values=flag_values)
  flags.DEFINE_integer('num', 1, 'Images.', flag_values=flag_values)
  with pytest.raises(SystemExit) as exit_info:
    command_line.parse_private_flags(flag_values, ['prog', '--no_ema'])
  assert exit_info.value.code == 2
  booleans = command_line.boolean_flags(flag_values)
  assert booleans == ['ema']
  assert command_line.unknown_flag_message('--no_ema', list(flag_values), booleans) == (
      'Unknown flag --no_ema; this program spells it --noema.')
  # Not for a flag that is not a boolean: absl has no --nonum.
  assert 'spells it' not in command_line.unknown_flag_message('--no_num', list(flag_values),
                                                              booleans)


def _run_two_processes(tmp_path, runner: str | None, flags: list[str], env_extra=None,
                       library_logs: bool = False, failure: str | None = None):
  """Runs ``runner -m dcgan_jax.main`` as 2 processes x 2 CPU devices (gloo) on the digits
  dataset at 8x8; returns ([Popen], [(stdout, stderr)]). Process 0 alone gets
  ``--library_logs`` if ``library_logs``. Once process 0's stderr has ``failure`` (what it says
  as it fails), both processes must end within a minute: a hang fails the test then."""
  import os  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2 '
             + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''), **(env_extra or {}))
  # Prepared once here: two processes preparing one tfds data_dir at the same time would race.
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  data.dataset_info(ConfigDict({'dataset': 'digits', 'data_dir': str(tmp_path / 'tfds'),
                                'image_size': 8, 'channels': 1}))
  common = [sys.executable, *([str(_ROOT / 'tests' / runner)] if runner else []), '-m',
            'dcgan_jax.main',
            '--config=configs/default.py', f'--config.data_dir={tmp_path / "tfds"}',
            '--config.image_size=8', '--config.generator_width=8',
            '--config.discriminator_width=8', '--config.batch_size=16',
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2'] + flags
  # Files, not pipes: process 0's stderr is read while the processes run.
  logs = [(tmp_path / f'process{i}.out', tmp_path / f'process{i}.err') for i in range(2)]
  with contextlib.ExitStack() as files:
    processes = [subprocess.Popen(common + [f'--process_id={i}']
                                  + ['--library_logs'] * (library_logs and i == 0),
                                  cwd=_ROOT, env=env,
                                  stdout=files.enter_context(open(out, 'w', encoding='utf-8')),
                                  stderr=files.enter_context(open(err, 'w', encoding='utf-8')))
                 for i, (out, err) in enumerate(logs)]
  try:
    deadline = time.monotonic() + 300
    if failure is not None:
      while (time.monotonic() < deadline and failure not in logs[0][1].read_text()
             and all(p.poll() is None for p in processes)):
        time.sleep(0.5)
      deadline = min(deadline, time.monotonic() + 60)
    for p in processes:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
    return processes, [(out.read_text(), err.read_text()) for out, err in logs]
  finally:  # A hang (processes disagreeing at a barrier) fails the test instead of lingering.
    for p in processes:
      p.kill()


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path):
  """--coordinator_address/--num_processes/--process_id: 2 processes x 2 CPU devices, gloo."""
  workdir = tmp_path / 'run'
  # In-training FID too, with a stand-in extractor: each process scores its share of the images.
  # Process 0 also prints its libraries' INFO logs (--library_logs); process 1 hides them.
  processes, outputs = _run_two_processes(tmp_path, 'stand_in_inception.py', [
      f'--workdir={workdir}', '--config.num_train_steps=2', '--config.quality_every_steps=0',
      # A grid at step 1 alone (queued by process 0; the others go on) and at the end.
      '--config.sample_every_steps=1',
      '--config.inception_weights=stand_in.pth', '--config.eval_every_steps=2',
      '--config.eval_num_samples=40',
      # Fused dispatch across processes: chunks (0, 1) and (1, 2), the second fed the
      # first's global (not fully addressable) non-finite tracker.
      '--config.steps_per_dispatch=2', '--config.log_every_steps=1',
      # Each process traces the second step into its own folder.
      '--config.profile_steps=1', '--config.profile_skip_steps=1'], library_logs=True)
  for i, (process, (_, stderr)) in enumerate(zip(processes, outputs)):
    assert process.returncode == 0, stderr[-3000:]
    assert f'JAX process {i} of 2' in stderr
    assert 'on 4 devices' in stderr  # One global batch over both processes' devices.
    assert 'Up to 2 steps per device program' in stderr
    # orbax's INFO lines (a few dozen per checkpoint) only with --library_logs.
    assert ('checkpoint_manager.py' in stderr) == (i == 0)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2']
  # Process 0 alone writes samples: one grid per sampling step, and the progress animation.
  assert sorted(p.name for p in (workdir / 'samples').iterdir()) == [
      'progress.gif', 'step_000001.png', 'step_000002.png']
  assert len(list(workdir.glob('events.out.tfevents*'))) == 1  # Only process 0 writes events.
  # The FID of both processes' shares equals the one computed here in one process.
  best = json.loads((workdir / 'best_fid.json').read_text())
  assert best['step'] == 2 and best['num_generated'] == 40 and best['num_real'] == 40
  assert 'Step 2: FID' in outputs[0][1] and 'Step 2: FID' not in outputs[1][1]
  fid, manifold = _expected_stand_in_fid(workdir, 40)
  assert best['fid'] == pytest.approx(fid, rel=1e-5)
  # Precision, recall, density and coverage on the features gathered from both processes.
  assert {name: best[name] for name in manifold} == pytest.approx(manifold, abs=1e-6)
  for i in range(2):
    folder = workdir / 'profile' / f'process_{i}'
    assert list(folder.rglob('perfetto_trace.json.gz'))
    assert (folder / 'train_program.hlo.txt').is_file()
    assert 'Profiled steps 2 to 2' in outputs[i][1]


@pytest.mark.slow
def test_two_processes_train_with_pmap_through_periodic_checkpoints_and_grids(tmp_path):
  """parallelism=pmap over 2 processes: the host copies of the state (for a checkpoint, a grid,
  the end of the run) indexed pmap's global arrays, a computation each process entered at its
  own moment, and runs hung at their first periodic checkpoint."""
  workdir = tmp_path / 'run'
  processes, outputs = _run_two_processes(tmp_path, None, [
      f'--workdir={workdir}', '--config.parallelism=pmap', '--config.num_train_steps=6',
      '--config.checkpoint_every_steps=3', '--config.sample_every_steps=3',
      '--config.log_every_steps=2', '--config.quality_every_steps=0',
      '--config.image_size=16', '--config.latent_dim=8', '--config.num_sample_images=8'])
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
    assert 'Finished at step 6' in stderr and '(pmap)' in stderr
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['3', '6']
  assert sorted(p.name for p in (workdir / 'samples').glob('*.png')) == [
      'step_000003.png', 'step_000006.png']


@pytest.mark.slow
def test_two_processes_stop_together_at_a_non_finite_loss_behind_a_queued_grid(tmp_path):
  """Step 2's loss is NaN and step 2's grid is queued (due alone): every process checks the
  grid's copy of the non-finite tracker where the grid would be written, so both stop with the
  same one-line error (none waits at a barrier for the other) and no grid of the bad state is
  written."""
  workdir = tmp_path / 'run'
  processes, outputs = _run_two_processes(tmp_path, 'poisoned_step.py', [
      f'--workdir={workdir}', '--config.num_train_steps=4', '--config.sample_every_steps=2',
      '--config.quality_every_steps=0', '--config.checkpoint_every_steps=0',
      '--config.log_every_steps=4', '--config.device_resident=never'],
      env_extra={'DCGAN_JAX_POISON': '2:g_loss'})
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 2, stderr[-3000:]
    assert 'non-finite g_loss at step 2; no checkpoint was saved' in stderr
    assert 'Traceback' not in stderr
  assert not list((workdir / 'samples').glob('*.png'))
  assert not (workdir / 'checkpoints').exists() or not list((workdir / 'checkpoints').iterdir())


@pytest.mark.slow
def test_two_processes_stop_together_when_process_0_cannot_write_a_grid(tmp_path):
  """Process 0 alone writes the sample grids; a full disk ended it with its one line, but left
  process 1 waiting at the sync point after the grids (an hour), and process 0 waiting for it at
  exit (five minutes, then both crashed with a page of C++ logs). Now process 0 tells the
  others, which stop at that point with a line that names it, and both end at once."""
  workdir = tmp_path / 'run'
  grid = workdir / 'samples' / 'step_000002.png'
  processes, outputs = _run_two_processes(tmp_path, 'refused_write.py', [
      f'--workdir={workdir}', '--config.num_train_steps=2', '--config.quality_every_steps=0',
      '--config.sample_every_steps=0', '--config.log_every_steps=2'],
      failure=f'Could not write {grid}')
  failure = (f'Could not write {grid} (No space left on device); free some disk space (or raise '
             'the quota or file-size limit) and run the same command again: the checkpoints in '
             f'{workdir / "checkpoints"} are intact, and it resumes from step 2.')
  expected = [failure, f'Process 0 of this multi-process run failed, so process 1 stopped too: '
                       f'{failure}']
  for process, (_, stderr), line in zip(processes, outputs, expected):
    assert process.returncode == 2, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == line
    assert 'Traceback' not in stderr
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2']


def _expected_stand_in_fid(workdir, num):
  """The stand-in FID of the run's final EMA generator, computed in this (single) process, and
  its precision, recall, density and coverage."""
  from dcgan_jax import data, evaluation, sample, train_hooks  # pylint: disable=g-import-not-at-top
  from stand_in_inception import stand_in_features  # pylint: disable=g-import-not-at-top

  generator, variables, config, _ = sample.load_generator(workdir)
  z = train_hooks.latents(int(config.seed), train_hooks.EVAL_TAG, num, int(config.latent_dim))
  fake = stand_in_features(evaluation.to_uint8(sample.generate(generator, variables, z)))
  real = stand_in_features(data.load_all_images(config, max_examples=num))
  fake_stats = evaluation.FeatureStatistics().update(fake['pool'])
  real_stats = evaluation.FeatureStatistics().update(real['pool'])
  return (evaluation.frechet_distance(real_stats.mean, real_stats.covariance, fake_stats.mean,
                                      fake_stats.covariance),
          evaluation.manifold_metrics(real['pool'], fake['pool']))


def test_workdir_alone_with_an_older_config_json_and_no_defaults_is_one_line(tmp_path):
  """A plain pip install has no configs/default.py to fill in fields added since a run's
  config.json was written: a field it lacks was an AttributeError with a traceback."""
  from tiny_configs import tiny_config  # pylint: disable=g-import-not-at-top
  saved = tiny_config(str(tmp_path)).to_dict()
  del saved['parallelism']
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.json').write_text(json.dumps(saved))
  code = ('import sys\nfrom dcgan_jax import config_files, main\n'
          'config_files.default_values = lambda: {}  # As without configs/ beside the package.\n'
          f'sys.argv = ["main", "--workdir={tmp_path / "run"}"]\nmain.run()\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f'The config.json of {tmp_path / "run"} lacks a field this version of dcgan_jax reads '
      '(parallelism); pass the config file and the overrides the run was started with, '
      '--config=... .')


def test_reloading_the_program_module_defines_its_flags_again(monkeypatch):
  """importlib.reload(dcgan_jax.main), as a notebook user does after an edit, raised absl's
  DuplicateFlagError where absl's reload detection misses: its finder sits before the last one
  of sys.meta_path, and an editable install (the notebook's own) adds a finder after it."""
  import importlib  # pylint: disable=g-import-not-at-top
  from dcgan_jax import main  # pylint: disable=g-import-not-at-top
  # As with an editable install: absl's detector after the finder that finds the module.
  detectors = [f for f in sys.meta_path if type(f).__name__ == 'ReloadDetector']
  monkeypatch.setattr(sys, 'meta_path', [f for f in sys.meta_path if f not in detectors]
                      + detectors)
  own = lambda: sorted(f.name for f in main.FLAGS.get_flags_for_module(main.__name__))
  before = own()
  for _ in range(2):
    importlib.reload(main)
  assert own() == before and 'config' in before and 'workdir' in before
  assert main.FLAGS['workdir'].default is None and not main.FLAGS['distributed'].default
