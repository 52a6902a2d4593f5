"""The bad-input table of README.md ("What a mistake looks like"): one test per row.

Each row runs a real CLI entry point in a process of its own and checks the contract: exit
status 2, no traceback, the last line of stderr names what was wrong and what is valid (and no
other line repeats it), and nothing is created or changed: a sentinel file already in the workdir
(standing for earlier checkpoints) is untouched. Rows that need no TensorFlow run in processes
forked from tests/cli_fork_server.py, which has imported jax and friends once (a fresh
interpreter spends ~2 s on that per row); the rest start ``python -m`` afresh.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dcgan_jax.errors import EXIT_USER_ERROR

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = '--config=configs/default.py'

# (id, module, args (with {w} = workdir, {t} = tmp dir), expected text in the last stderr line)
ROWS = [
    ('unknown_config_field', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.batch_sise=8'],
     "Unknown config field 'batch_sise' (--config.batch_sise); did you mean 'batch_size'?"),
    ('sub_field_of_a_value', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.dataset.foo=1'],
     "--config.dataset.foo: 'dataset' is a single value (str 'digits'), not a group of fields; "
     'pass --config.dataset=<value>.'),
    ('sub_sub_field_of_a_value', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.batch_size.x.y=1'],
     "--config.batch_size.x.y: 'batch_size' is a single value (int 64)"),
    ('negative_period', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.checkpoint_every_steps=-5'],
     'checkpoint_every_steps is -5; use a number of steps, 0 to disable or -1'),
    ('bad_field_value', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.batch_size=abc'],
     'batch_size takes a whole number (the config file sets'),
    ('bad_bool_value', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.background_checkpoints=maybe'],
     'background_checkpoints takes true or false'),
    ('missing_config_file', 'dcgan_jax.main', ['--config=configs/nope.py', '--workdir={w}'],
     "Cannot load the config file 'configs/nope.py': no such file relative to the working "
     'directory'),
    # A config file of the user's own: its get_config() raises (absl's line ended in a colon, the
    # reason below it), or sets a misspelt field (the first of the other fields was named).
    ('config_file_raises', 'dcgan_jax.main', ['--config={t}/raises.py', '--workdir={w}'],
     "raises.py' (ValueError: my own mistake in get_config)"),
    ('config_file_misspells_a_field', 'dcgan_jax.main',
     ['--config={t}/misspelt.py', '--workdir={w}'],
     "Unknown config field 'generator_widht', set in"),
    ('missing_workdir_flag', 'dcgan_jax.main', [CONFIG], '--workdir is required'),
    # Without --config a workdir that holds a run resumes with its config.json; one that holds
    # none is a mistake, as is an override with nothing to override.
    ('no_config_and_no_run', 'dcgan_jax.main', ['--workdir={w}'],
     '--config is required to start a run, e.g. --config=configs/default.py: the workdir'),
    ('json_config', 'dcgan_jax.main', ['--config={w}/config.json', '--workdir={w}'],
     "--config takes a Python config file (configs/*.py), not '"),
    ('override_without_config', 'dcgan_jax.main', ['--workdir={w}', '--config.num_train_steps=5'],
     '--config.num_train_steps overrides a field of a config file: pass --config=<file> too'),
    # A bad value of one of main's own flags was reported as a config file that cannot load.
    ('bad_main_flag_value', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--distributed=maybe'],
     "flag --distributed=maybe: ('Non-boolean argument to boolean flag', 'maybe')"),
    ('no_underscore_boolean', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--no_library_logs'],
     'Unknown flag --no_library_logs; this program spells it --nolibrary_logs.'),
    ('unknown_dataset', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.dataset=nope'],
     "Unknown dataset 'nope'; use one of digits, folder, array, mnist"),
    ('image_size_not_4_2k', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.image_size=48'],
     'image_size must be 4·2^k: 8, 16, 32, 64, 128 or 256 (got 48)'),
    ('batch_not_divisible', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.batch_size=12'],
     'batch_size 12 is not divisible by the 8 devices'),
    ('unknown_loss', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.loss=bce'],
     'loss must be one of non_saturating'),
    ('unknown_upsample', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.upsample=bilinear'],
     'transpose or resize_conv'),
    ('unknown_discriminator_norm', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.discriminator_norm=instance'],
     "discriminator_norm must be one of batch, layer, spectral, none (got 'instance')"),
    ('unknown_augment', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.augment=color,flip'],
     "augment must be a comma-separated subset of blit, geom, ada_color, filter, noise, color, "
     "translation, cutout ('bgc' is ADA's blit,geom,ada_color; 'bgcfnc' adds filter,noise,cutout) "
     "or '' for none (got 'flip')"),
    ('ada_without_augment', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.ada_target=0.6'],
     'set augment too'),
    ('conditioning_without_classes', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.generator_conditioning=batchnorm'],
     'generator_conditioning=batchnorm conditions G on class labels: it needs num_classes > 0'),
    ('unknown_dtype', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.dtype=float16'],
     'float32 or bfloat16'),
    ('unknown_parallelism', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.parallelism=dp'],
     'shard_map or pmap'),
    ('zero_d_steps', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.d_steps=0'],
     'd_steps must be a positive integer'),
    ('unknown_lr_schedule', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.lr_schedule=step'],
     'constant, cosine or linear'),
    ('negative_learning_rate', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.g_learning_rate=-1'],
     'g_learning_rate must be a finite positive number'),
    ('ema_decay_out_of_range', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.ema_decay=1.5'],
     'ema_decay must be in [0, 1)'),
    ('real_label_zero', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.real_label=0'],
     'real_label must be in (0, 1]'),
    ('real_label_with_wasserstein', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.loss=wasserstein', '--config.real_label=0.9'],
     "real_label 0.9 has no effect with loss 'wasserstein'"),
    ('bad_device_resident', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.device_resident=maybe'], 'auto, always, never'),
    # 2 trained, then failed at the first sample grid (a traceback), each time it was resumed.
    ('two_channels', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.channels=2'],
     'channels must be 1 (grey) or 3 (RGB)'),
    ('negative_image_channel_multiple', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.image_channel_multiple=-1'],
     'image_channel_multiple must be a non-negative integer'),
    ('missing_folder', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=folder', '--config.dataset_path={t}/missing'],
     "missing' does not exist; give a directory or .zip of images"),
    ('empty_folder', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=folder', '--config.dataset_path={t}/empty',
      '--config.data_dir={t}/tfds'], 'holds no images'),
    ('only_corrupt_images', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=folder', '--config.dataset_path={t}/corrupt',
      '--config.data_dir={t}/tfds'], 'could be read'),
    ('array_wrong_shape', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=array', '--config.dataset_path={t}/rgb64.npy'],
     'expected uint8 [N, 32, 32, 1]'),
    ('array_split', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=array', '--config.dataset_path={t}/grey32.npy',
      "--config.split=train[:50%]"],
     "dataset 'array' has no splits: it trains on the whole file (split 'train'), not "
     "'train[:50%]'"),
    ('array_not_numpy', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=array', '--config.dataset_path={t}/text.npy'],
     "text.npy' is not a numpy file (damaged, or another format)"),
    ('array_not_device_resident', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=array', '--config.dataset_path={t}/grey32.npy',
      '--config.device_resident=never'], "is read on the devices only"),
    ('negative_num_classes', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.num_classes=-1'],
     'num_classes must be 0 (unconditional, the paper) or the number of classes'),
    ('array_without_labels', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.dataset=array', '--config.dataset_path={t}/grey32.npy',
      '--config.num_classes=10'], 'has no class labels'),
    ('workdir_under_a_file', 'dcgan_jax.main', [CONFIG, '--workdir={t}/a_file/run'],
     'not writable'),
    # A file where the run keeps a folder (samples/, best_fid/, ...): the run trained, then
    # failed with a traceback at its first sample grid.
    ('workdir_folder_is_a_file', 'dcgan_jax.main', [CONFIG, '--workdir={t}/filed'],
     "filed/samples is a file, not a folder: the run keeps its sample grids there. Move or "
     'rename the file'),
    ('data_dir_is_a_file', 'dcgan_jax.main', [CONFIG, '--workdir={w}', '--config.data_dir={t}/a_file'],
     "a_file' is a file; give a directory for the prepared datasets"),
    ('data_dir_unwritable', 'dcgan_jax.main',
     [CONFIG, '--workdir={w}', '--config.data_dir={t}/a_file/tfds'],
     'Cannot write the prepared digits dataset into'),
    ('sample_missing_workdir', 'dcgan_jax.sample', ['--workdir={t}/nowhere'], 'does not exist'),
    ('sample_workdir_without_run', 'dcgan_jax.sample', ['--workdir={w}'], 'no run config'),
    ('sample_bad_num', 'dcgan_jax.sample', ['--workdir={w}', '--num=0'],
     '--num must be between 1 and 4096'),
    ('sample_out_is_a_folder', 'dcgan_jax.sample', ['--workdir={w}', '--out={t}/empty'],
     'empty is a directory; give a file name such as'),
    ('sample_out_folder_missing', 'dcgan_jax.sample', ['--workdir={w}', '--out={t}/no/grid.png'],
     'does not exist; create it or give another path'),
    ('evaluate_missing_workdir', 'dcgan_jax.evaluate',
     ['--workdir={t}/nowhere', '--inception_weights={t}/w.pth'], 'does not exist'),
    ('evaluate_workdir_without_run', 'dcgan_jax.evaluate',
     ['--workdir={w}', '--inception_weights={t}/w.pth'], 'no run config'),
    ('weights_download_bad_url', 'dcgan_jax.evaluation.download_weights',
     ['--url=file://{t}/missing.pth', '--cache_dir={t}/cache'], 'download it by hand'),
    ('summary_bad_image_size', 'dcgan_jax.summary', [CONFIG, '--config.image_size=48'],
     'image_size must be 4·2^k'),
    ('probe_missing_workdir', 'dcgan_jax.probe', ['--workdir={t}/nowhere'], 'does not exist'),
    ('probe_bad_l2', 'dcgan_jax.probe', ['--workdir={w}', '--l2=-1'],
     "--l2 must be 'auto' or a positive penalty"),
    ('fid_missing_path', 'dcgan_jax.fid', ['{t}/nowhere', '{t}/elsewhere'], 'does not exist'),
    ('fid_one_path', 'dcgan_jax.fid', ['{w}'], 'Expected two PATHs'),
]


# Only these need TensorFlow to find the mistake (tfds knows the dataset names; decoding, done
# while tfds prepares the folder, finds the unreadable images). Every other row runs with
# TensorFlow made unimportable, which proves its message comes before the seconds that loading
# TensorFlow takes.
NEEDS_TENSORFLOW = {'unknown_dataset', 'only_corrupt_images', 'data_dir_unwritable'}
FORK_SERVER = str(ROOT / 'tests' / 'cli_fork_server.py')


class CliForkServer:
  """Runs `python -m module argv` (TensorFlow unimportable) in a process forked per call."""

  def __init__(self):
    self._process = subprocess.Popen([sys.executable, FORK_SERVER], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert json.loads(self._process.stdout.readline()) == {'ready': True}

  def run(self, module, argv, env, out_dir, timeout=300):
    """Returns (returncode, stdout, stderr) of the entry point's run (-9: killed at timeout)."""
    stdout, stderr = out_dir / 'fork_stdout.txt', out_dir / 'fork_stderr.txt'
    request = {'module': module, 'argv': argv, 'env': env, 'cwd': str(ROOT),
               'stdout': str(stdout), 'stderr': str(stderr), 'timeout': timeout}
    self._process.stdin.write(json.dumps(request) + '\n')
    self._process.stdin.flush()
    reply = self._process.stdout.readline()
    assert reply, 'the fork server died'
    returncode = json.loads(reply)['returncode']
    texts = [p.read_text(encoding='utf-8', errors='replace') for p in (stdout, stderr)]
    stdout.unlink()
    stderr.unlink()
    return returncode, *texts

  def close(self):
    self._process.stdin.close()
    self._process.wait(timeout=60)


@pytest.fixture(scope='module')
def fork_server():
  server = CliForkServer()
  yield server
  server.close()


@pytest.fixture
def places(tmp_path):
  workdir = tmp_path / 'work'
  (workdir / 'checkpoints').mkdir(parents=True)
  sentinel = workdir / 'checkpoints' / 'earlier_run.txt'
  sentinel.write_text('saved before the mistake')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'corrupt').mkdir()
  (tmp_path / 'corrupt' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  (tmp_path / 'a_file').write_text('a regular file, not a directory')
  (tmp_path / 'filed').mkdir()  # A workdir whose samples/ is a file.
  (tmp_path / 'filed' / 'samples').write_text('a regular file, not the folder of sample grids')
  np.save(tmp_path / 'rgb64.npy', np.zeros((4, 64, 64, 3), np.uint8))
  np.save(tmp_path / 'grey32.npy', np.zeros((4, 32, 32, 1), np.uint8))
  (tmp_path / 'text.npy').write_text('not an array')
  (tmp_path / 'raises.py').write_text(
      "def get_config():\n  raise ValueError('my own mistake in get_config\\nmore')\n")
  (tmp_path / 'misspelt.py').write_text(
      f"from dcgan_jax.config_files import load_config\n\n\ndef get_config():\n"
      f"  config = load_config({str(ROOT / 'configs' / 'default.py')!r})\n"
      f"  config.generator_widht = 32\n  return config\n")
  return workdir, sentinel


def _files(root):
  """Every path under root with its size, leaving out the caches a failed start may fill."""
  return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                for p in root.rglob('*') if p.relative_to(root).parts[0] not in ('xdg', 'tfds', 'cache'))


@pytest.mark.parametrize('row_id,module,args,expected', ROWS, ids=[r[0] for r in ROWS])
def test_mistake_is_one_clear_line(tmp_path, tmp_path_factory, places, fork_server, row_id,
                                   module, args, expected):
  workdir, sentinel = places
  argv = [a.format(w=workdir, t=tmp_path) for a in args]
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'xdg'))
  before = _files(tmp_path)
  if row_id in NEEDS_TENSORFLOW:
    proc = subprocess.run([sys.executable, '-m', module] + argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    returncode, stderr = proc.returncode, proc.stderr
    # No tqdm bars (cursor codes) in a log that is not a terminal, and no tfds banner about
    # downloading while a local folder is prepared.
    assert 'Generating splits' not in stderr and '\x1b[A' not in stderr, stderr[-2000:]
    assert 'Downloading and preparing' not in proc.stdout, proc.stdout[-2000:]
  else:  # Outside tmp_path, which must stay unchanged.
    returncode, _, stderr = fork_server.run(module, argv, env, tmp_path_factory.mktemp('out'))
  assert returncode == EXIT_USER_ERROR, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert expected in lines[-1], lines[-1]
  # Said once, in one line: not repeated by a second handler, not spread over several lines.
  assert sum(expected in line for line in lines) == 1, stderr[-2000:]
  # Nothing was created, changed or removed (the workdir above all); caches may appear.
  assert _files(tmp_path) == before
  assert sentinel.read_text() == 'saved before the mistake'


def test_fork_server_reports_what_a_fresh_process_would(tmp_path, fork_server):
  """The rows above pass only on exit status 2 and a clean stderr: the server must not hide
  failures, exit statuses or output, and TensorFlow must be unimportable in its children."""
  env = dict(os.environ)
  code, stdout, stderr = fork_server.run('dcgan_jax.evaluation.download_weights', ['--help'],
                                         env, tmp_path)
  assert code == 0 and '--cache_dir' in stdout and not stderr
  code, _, stderr = fork_server.run('tensorflow', [], env, tmp_path)
  assert code == 1 and 'Traceback' in stderr and 'tensorflow' in stderr.splitlines()[-1]
  code, _, stderr = fork_server.run('dcgan_jax.main', ['--config=configs/default.py'],
                                    dict(env, XDG_CACHE_HOME=str(tmp_path)), tmp_path)
  assert code == EXIT_USER_ERROR and '--workdir is required' in stderr
  # A child that hangs is killed at its timeout (a hung row fails instead of hanging the run).
  code, _, _ = fork_server.run('timeit', ['-n1', '-r1', 'import time; time.sleep(60)'], env,
                               tmp_path, timeout=2)
  assert code == -9
  assert not list(tmp_path.iterdir())  # Its output files are read and removed.


def test_table_in_readme_lists_every_row():
  readme = (ROOT / 'README.md').read_text()
  for row_id, *_ in ROWS:
    assert f'`{row_id}`' in readme, row_id


def test_long_reasons_are_cut_at_a_word_not_mid_token():
  """Messages quoting a library's error (e.g. tfds' failed download) keep to one short line."""
  from dcgan_jax.errors import first_line  # pylint: disable=g-import-not-at-top
  error = ConnectionError("Max retries exceeded with url: /x (Caused by NewConnectionError(host="
                          "'storage.googleapis.com', port=443))\nsecond line")
  short = first_line(error, max_chars=60)
  assert short == 'Max retries exceeded with url: /x (Caused by...'
  assert first_line(error) == str(error).splitlines()[0]  # No limit: the whole first line.
  assert first_line(ValueError('short'), max_chars=60) == 'short'
