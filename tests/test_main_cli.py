"""The command line, run as users run it: ``python -m dcgan_jax.main --config=... --workdir=...``.

Each mistake must end the process with exit status 2 and one explanatory line as the last line
of stderr (INFO logs may precede it), with no traceback, and must leave an existing workdir as it
was. The processes are started together, so the suite pays for their start-up (importing JAX
and TensorFlow) about once rather than once per case.
"""
import json
import pathlib
import subprocess
import sys

import pytest

from dcgan_jax.errors import EXIT_USER_ERROR

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (extra arguments, text the error line must contain). '{tmp}' is the case's folder.
CASES = {
    'unknown_dataset': (
        ['--config.dataset=no_such_dataset'],
        "Unknown dataset 'no_such_dataset'; use one of digits, folder, array, mnist"),
    'missing_folder': (
        ['--config.dataset=folder', '--config.dataset_path={tmp}/does_not_exist'],
        'does_not_exist'),
    'empty_folder': (
        ['--config.dataset=folder', '--config.dataset_path={tmp}/empty'],
        'holds no images'),
    'image_size_48': (
        ['--config.image_size=48'],
        'image_size must be 4·2^k: 8, 16, 32, 64, 128 or 256 (got 48)'),
    'batch_not_divisible': (  # conftest gives every process 8 devices.
        ['--config.batch_size=12'],
        'batch_size 12 is not divisible by the 8 devices'),
    'unknown_config_field': (  # A misspelling: the message suggests the real field.
        ['--config.batch_sise=16'],
        "Unknown config field 'batch_sise' (--config.batch_sise); did you mean 'batch_size'?"),
    'bad_value': (
        ['--config.batch_size=many'],
        'flag --config.batch_size=many'),
    'missing_config_file': (
        ['--config={tmp}/nope.py'],
        'Cannot load the config file'),
}


def _workdir(case_dir: pathlib.Path, name: str) -> pathlib.Path:
  if name == 'unwritable_workdir':
    # A path below a regular file can never be created (root ignores permission bits).
    return case_dir / 'a_file' / 'run'
  return case_dir / 'run'


@pytest.fixture(scope='module')
def cli_results(tmp_path_factory):
  """Runs every case at once; returns name -> (CompletedProcess-like, case folder, snapshot)."""
  tfds_dir = tmp_path_factory.mktemp('tfds')
  cases = dict(CASES)
  cases['unwritable_workdir'] = ([], 'is not writable')
  running = {}
  for name, (args, _) in cases.items():
    case_dir = tmp_path_factory.mktemp(name)
    (case_dir / 'empty').mkdir()
    (case_dir / 'a_file').write_text('not a directory')
    workdir = _workdir(case_dir, name)
    if name != 'unwritable_workdir':
      # An earlier run's checkpoint that a failed start must not touch.
      marker = workdir / 'checkpoints' / '7' / 'marker'
      marker.parent.mkdir(parents=True)
      marker.write_text('an earlier run')
    before = sorted(str(p) for p in case_dir.rglob('*'))
    command = [sys.executable, '-m', 'dcgan_jax.main', '--config=configs/default.py',
               f'--workdir={workdir}', f'--config.data_dir={tfds_dir}']
    command += [arg.format(tmp=case_dir) for arg in args]
    process = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, encoding='utf-8')
    running[name] = (process, case_dir, before)
  results = {}
  for name, (process, case_dir, before) in running.items():
    stdout, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stdout, stderr, case_dir, before)
  return results


@pytest.mark.parametrize('name', sorted(CASES) + ['unwritable_workdir'])
def test_mistake_gives_one_line_exit_2_and_leaves_the_workdir(cli_results, name):
  returncode, _, stderr, case_dir, before = cli_results[name]
  expected = CASES[name][1] if name in CASES else 'is not writable'
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert returncode == EXIT_USER_ERROR, stderr[-2000:]
  assert 'Traceback' not in stderr
  assert lines and expected in lines[-1], stderr[-2000:]
  # The explanation is the only line of its kind: not repeated, not spread over several lines.
  assert sum(expected in line for line in lines) == 1
  assert sorted(str(p) for p in case_dir.rglob('*')) == before
  marker = _workdir(case_dir, name) / 'checkpoints' / '7' / 'marker'
  if name != 'unwritable_workdir':
    assert marker.read_text() == 'an earlier run'


def test_help_lists_the_flags():
  result = subprocess.run([sys.executable, '-m', 'dcgan_jax.main', '--helpshort'], cwd=_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert 'Traceback' not in result.stderr  # absl prints the help and exits (status 1).
  assert '--workdir' in result.stdout and '--config' in result.stdout


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path):
  """--coordinator_address/--num_processes/--process_id: 2 processes x 2 CPU devices, gloo."""
  import os  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2 '
             + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''))
  workdir = tmp_path / 'run'
  # Prepared once here: two processes preparing one tfds data_dir at the same time would race.
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  data.dataset_info(ConfigDict({'dataset': 'digits', 'data_dir': str(tmp_path / 'tfds'),
                                'image_size': 8, 'channels': 1}))
  # In-training FID too, with a stand-in extractor: each process scores its share of the images.
  common = [sys.executable, str(_ROOT / 'tests' / 'stand_in_inception.py'), '-m',
            'dcgan_jax.main', '--config=configs/default.py',
            f'--workdir={workdir}', f'--config.data_dir={tmp_path / "tfds"}',
            '--config.image_size=8', '--config.generator_width=8',
            '--config.discriminator_width=8', '--config.batch_size=16',
            '--config.num_train_steps=2', '--config.quality_every_steps=0',
            '--config.inception_weights=stand_in.pth', '--config.eval_every_steps=2',
            '--config.eval_num_samples=40',
            # Fused dispatch across processes: chunks (0, 1) and (1, 2), the second fed the
            # first's global (not fully addressable) non-finite tracker.
            '--config.steps_per_dispatch=2', '--config.log_every_steps=1',
            # Each process traces the second step into its own folder.
            '--config.profile_steps=1', '--config.profile_skip_steps=1',
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  # Process 0 also prints its libraries' INFO logs (--library_logs); process 1 hides them.
  processes = [subprocess.Popen(common + [f'--process_id={i}'] + ['--library_logs'] * (i == 0),
                                cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for i, (process, (_, stderr)) in enumerate(zip(processes, outputs)):
    assert process.returncode == 0, stderr[-3000:]
    assert f'JAX process {i} of 2' in stderr
    assert 'on 4 devices' in stderr  # One global batch over both processes' devices.
    assert 'Up to 2 steps per device program' in stderr
    # orbax's INFO lines (a few dozen per checkpoint) only with --library_logs.
    assert ('checkpoint_manager.py' in stderr) == (i == 0)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2']
  # Process 0 alone writes samples: one grid per sampling step, and the progress animation.
  assert sorted(p.name for p in (workdir / 'samples').iterdir()) == ['progress.gif',
                                                                      'step_000002.png']
  assert len(list(workdir.glob('events.out.tfevents*'))) == 1  # Only process 0 writes events.
  # The FID of both processes' shares equals the one computed here in one process.
  best = json.loads((workdir / 'best_fid.json').read_text())
  assert best['step'] == 2 and best['num_generated'] == 40 and best['num_real'] == 40
  assert 'Step 2: FID' in outputs[0][1] and 'Step 2: FID' not in outputs[1][1]
  assert best['fid'] == pytest.approx(_expected_stand_in_fid(workdir, 40), rel=1e-5)
  for i in range(2):
    folder = workdir / 'profile' / f'process_{i}'
    assert list(folder.rglob('perfetto_trace.json.gz'))
    assert (folder / 'train_program.hlo.txt').is_file()
    assert 'Profiled steps 2 to 2' in outputs[i][1]


def _expected_stand_in_fid(workdir, num):
  """The stand-in FID of the run's final EMA generator, computed in this (single) process."""
  from dcgan_jax import data, evaluation, sample, train  # pylint: disable=g-import-not-at-top
  from stand_in_inception import stand_in_features  # pylint: disable=g-import-not-at-top

  generator, variables, config, _ = sample.load_generator(workdir)
  z = train._latents(int(config.seed), train._EVAL_TAG, num, int(config.latent_dim))  # pylint: disable=protected-access
  fake = stand_in_features(evaluation.to_uint8(sample.generate(generator, variables, z)))
  real = stand_in_features(data.load_all_images(config, max_examples=num))
  fake_stats = evaluation.FeatureStatistics().update(fake['pool'])
  real_stats = evaluation.FeatureStatistics().update(real['pool'])
  return evaluation.frechet_distance(real_stats.mean, real_stats.covariance, fake_stats.mean,
                                     fake_stats.covariance)
