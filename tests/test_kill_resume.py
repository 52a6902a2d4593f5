"""``kill -9`` of a real training process, then the same command again: the run must resume.

A training process (``python -m dcgan_jax.main``, as users start it) is killed with SIGKILL at
seeded random moments: while it trains between checkpoints, and while orbax writes a checkpoint
(its ``*.orbax-checkpoint-tmp*`` directory exists). After every kill the same command is run
again in the same workdir; it must start, resume from the newest checkpoint that was complete at
the kill, and a final rerun must end with a state bit-identical to that of a run never
interrupted.

Process start-up (JAX, TensorFlow, compiling) costs seconds, so kills are chained: in one workdir
a run is killed, its restart is killed later, and so on; two such chains and the uninterrupted
reference run go concurrently. Chain 0 runs as a default install does (TensorFlow: tfds digits,
TensorBoard events); chain 1 as a JAX-only GPU container does (TensorFlow unimportable: the same
digits from a .npy file as dataset 'array', scalars in metrics.jsonl). Both must end bit-identical
to the reference, and their logged curves must equal its curve step for step: a kill may cost
the steps since the last checkpoint, but never a hole in the record of the steps it kept.
Each process uses one CPU device (the reference too), which makes start-up cheaper than
conftest's eight, and all share JAX's persistent compilation cache.
"""
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

NUM_TRAIN_STEPS = 60
CHECKPOINT_EVERY = 2
KILLS_PER_CHAIN = 4
NUM_CHAINS = 2  # 8 kills in all.
NO_TENSORFLOW_CHAIN = 1
NO_TENSORFLOW_RUNNER = str(_ROOT / 'tests' / 'no_tensorflow_runner.py')
# Scalars that measure the wall clock, not the training: they differ between any two runs.
_TIMING_TAGS = ('img_per_sec', 'eta_seconds', 'steps_per_sec', 'uptime')
# Alternating kill moments: while training between checkpoints, and while a checkpoint is written.
MODES = ('step', 'write')

# clu's logging writer prints '[<step>] ...' for every logged step (log_every_steps=1).
_STEP_LINE = re.compile(r'\] \[(\d+)\] ')
_RESUMED = re.compile(r'Resumed from the checkpoint of step (\d+)\.')

pytestmark = pytest.mark.slow


def _command(workdir, tfds_dir, array_file=None):
  """The training command; with `array_file`, as run where TensorFlow is not installed."""
  if array_file is None:
    start, data = [sys.executable], [f'--config.data_dir={tfds_dir}']
  else:
    start = [sys.executable, NO_TENSORFLOW_RUNNER]
    data = ['--config.dataset=array', f'--config.dataset_path={array_file}']
  return start + ['-m', 'dcgan_jax.main', '--config=configs/default.py', *data,
                  f'--workdir={workdir}',
          '--config.image_size=8', '--config.generator_width=8',
          '--config.discriminator_width=8', '--config.latent_dim=8', '--config.batch_size=8',
          f'--config.num_train_steps={NUM_TRAIN_STEPS}',
          f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}', '--config.keep_checkpoints=3',
          '--config.log_every_steps=1', '--config.sample_every_steps=0',
          '--config.quality_every_steps=0', '--config.num_sample_images=4']


def _committed_steps(workdir):
  directory = pathlib.Path(workdir) / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _tmp_dirs(workdir):
  return sorted(p.name for p in (pathlib.Path(workdir) / 'checkpoints').glob(
      '*.orbax-checkpoint-tmp*'))


def _logged_step(log_path):
  text = log_path.read_text(encoding='utf-8', errors='replace')
  steps = [int(m.group(1)) for m in _STEP_LINE.finditer(text)]
  return max(steps) if steps else None


def _start(command, env, log_path):
  log = open(log_path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  process = subprocess.Popen(command, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  return process, log


def _run_to_end(command, env, log_path, timeout=400):
  process, log = _start(command, env, log_path)
  try:
    returncode = process.wait(timeout=timeout)
  finally:
    log.close()
  return returncode, log_path.read_text(encoding='utf-8', errors='replace')


def _kill_at_random_moment(process, workdir, log_path, mode, rng, deadline):
  """Waits for the moment `mode` names, then SIGKILLs; returns what the kill hit, or None."""
  target = None
  while process.poll() is None and time.monotonic() < deadline:
    step = _logged_step(log_path)
    if step is not None:  # Training runs (start-up and stale tmp clean-up are done).
      # A few steps into the run, so that most kills find a checkpoint of this run committed
      # (the restart then resumes from it) and a few don't (the restart starts afresh).
      target = target or step + rng.randint(1, 10)
      if step >= target:
        if mode == 'step':
          time.sleep(rng.uniform(0.0, 0.05))
          break
        if _tmp_dirs(workdir):  # 'write': the next checkpoint write from here on.
          time.sleep(rng.uniform(0.0, 0.02))
          break
    time.sleep(0.002)
  if process.poll() is not None:
    return None  # Finished (or died) before the chosen moment: no kill.
  hit = {'mode': mode, 'tmp_dirs': _tmp_dirs(workdir), 'step': _logged_step(log_path)}
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  hit['committed'] = _committed_steps(workdir)
  return hit


def _chain(index, base, tfds_dir, array_file, env, seed):
  """Kills KILLS_PER_CHAIN runs in one workdir, restarting each time; then runs to the end."""
  rng = random.Random(seed)
  workdir = base / f'chain{index}'
  command = _command(workdir, tfds_dir, array_file if index == NO_TENSORFLOW_CHAIN else None)
  record = {'workdir': workdir, 'kills': [], 'restarts': []}
  expected_resume = None  # The newest checkpoint complete when the previous run was killed.
  for trial in range(KILLS_PER_CHAIN + 1):
    log_path = base / f'chain{index}_run{trial}.log'
    if trial == KILLS_PER_CHAIN:
      returncode, text = _run_to_end(command, env, log_path)
      record['final'] = (returncode, text)
    else:
      process, log = _start(command, env, log_path)
      try:
        mode = MODES[(index + trial) % len(MODES)]
        hit = _kill_at_random_moment(process, workdir, log_path, mode, rng,
                                     deadline=time.monotonic() + 400)
      finally:
        if process.poll() is None:
          process.kill()
          process.wait()
        log.close()
      text = log_path.read_text(encoding='utf-8', errors='replace')
      record['kills'].append(hit)
    if trial:
      resumed = _RESUMED.findall(text)
      record['restarts'].append((expected_resume, [int(s) for s in resumed], text))
    if trial < KILLS_PER_CHAIN and record['kills'][-1] is not None:
      committed = record['kills'][-1]['committed']
      expected_resume = committed[-1] if committed else None
  return record


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The uninterrupted reference run and the killed-and-restarted chains, run concurrently."""
  base = tmp_path_factory.mktemp('kill_resume')
  tfds_dir = base / 'tfds'
  # Prepared once here: several processes preparing one tfds data_dir at a time would race.
  from dcgan_jax import data  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  digits = ConfigDict({'dataset': 'digits', 'data_dir': str(tfds_dir), 'image_size': 8,
                       'channels': 1})
  data.dataset_info(digits)
  # The very images the device-resident digits runs sample from, in the same order: the
  # TensorFlow-free chain trains on exactly the reference's data.
  array_file = base / 'digits_8x8.npy'
  np.save(array_file, data.load_all_images(digits))
  # JAX's persistent compilation cache, shared by all the processes: each restart then loads
  # the programs the first runs compiled (every op of the eager model init included) instead of
  # compiling them again, which is most of a start's cost.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1 '
             + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''),
             XDG_CACHE_HOME=str(base / 'cache'), TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  results = {}

  def reference():
    results['reference'] = _run_to_end(_command(base / 'reference', tfds_dir), env,
                                       base / 'reference.log')

  def chain(i):
    results[i] = _chain(i, base, tfds_dir, array_file, env, seed=1000 + i)

  threads = [threading.Thread(target=reference)]
  threads += [threading.Thread(target=chain, args=(i,)) for i in range(NUM_CHAINS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  results['reference_workdir'] = base / 'reference'
  return results


def _final_state(workdir):
  """The arrays of the final checkpoint's state item, as numpy, in a fixed leaf order."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(workdir) / 'checkpoints' / str(NUM_TRAIN_STEPS) / 'state'
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata
    # Restore as plain numpy arrays: the test process has 8 devices, the runs had 1.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    state = ocp.PyTreeCheckpointer().restore(path, restore_args=restore_args)
  return jax.tree_util.tree_flatten_with_path(state)[0]


def test_reference_run_finishes(runs):
  returncode, text = runs['reference']
  assert returncode == 0, text[-3000:]
  assert f'Finished at step {NUM_TRAIN_STEPS}' in text


@pytest.mark.parametrize('chain', range(NUM_CHAINS))
def test_every_kill_leaves_a_workdir_that_resumes(runs, chain):
  record = runs[chain]
  kills = record['kills']
  assert all(hit is not None for hit in kills), 'a run finished before its kill moment'
  assert len(kills) == KILLS_PER_CHAIN
  for expected, resumed, text in record['restarts']:
    assert 'Traceback' not in text, text[-3000:]
    if expected is None:  # Killed before the first checkpoint: a fresh start.
      assert resumed == [], text[-3000:]
    else:  # From the newest checkpoint that was complete at the kill, not an older one.
      assert resumed == [expected], (expected, resumed, text[-3000:])
  # Some restart of the chain resumed from a checkpoint (the seeds make sure of it).
  assert any(expected is not None for expected, _, _ in record['restarts'])
  returncode, text = record['final']
  assert returncode == 0, text[-3000:]
  assert f'Finished at step {NUM_TRAIN_STEPS}' in text
  # Temporary directories of interrupted writes are gone; the last checkpoint is the final step.
  assert _tmp_dirs(record['workdir']) == []
  assert _committed_steps(record['workdir'])[-1] == NUM_TRAIN_STEPS


def test_kills_hit_steps_and_checkpoint_writes(runs):
  kills = [hit for chain in range(NUM_CHAINS) for hit in runs[chain]['kills'] if hit]
  assert len(kills) == NUM_CHAINS * KILLS_PER_CHAIN
  assert {hit['mode'] for hit in kills} == set(MODES)
  # At least one kill landed while orbax had a checkpoint half-written. (A kill after a step may
  # too: with a save every 2 fast steps, a write is in flight most of the time.)
  assert any(hit['tmp_dirs'] for hit in kills), kills


@pytest.mark.parametrize('chain', range(NUM_CHAINS))
def test_killed_runs_end_bit_identical_to_an_uninterrupted_one(runs, chain):
  reference = _final_state(runs['reference_workdir'])
  resumed = _final_state(runs[chain]['workdir'])
  assert [path for path, _ in resumed] == [path for path, _ in reference]
  assert len(reference) > 10  # Params, batch stats, optimizer states, EMA, step, key.
  for (path, want), (_, got) in zip(reference, resumed):
    want, got = np.asarray(want), np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, path
    assert got.tobytes() == want.tobytes(), f'{jax_path(path)} differs'


def jax_path(path):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.keystr(path)


@pytest.mark.parametrize('chain', range(NUM_CHAINS))
def test_killed_runs_log_the_same_curve_as_an_uninterrupted_one(runs, chain):
  """Every step's scalars are on record once the run ends, equal to the reference's.

  Steps after the last checkpoint are trained (and logged) again after a kill; the steps up to
  it must already be on disk when it is written, in TensorBoard events (chain 0) or in
  metrics.jsonl (chain 1), whatever the kill cut short.
  """
  from dcgan_jax import run_logs  # pylint: disable=g-import-not-at-top

  workdir = runs[chain]['workdir']
  has_events = bool(list(workdir.glob('events.out.tfevents*')))
  assert has_events == (chain != NO_TENSORFLOW_CHAIN)
  assert (workdir / 'metrics.jsonl').is_file() == (chain == NO_TENSORFLOW_CHAIN)
  reference = run_logs.read_scalars(runs['reference_workdir'])
  resumed = run_logs.read_scalars(workdir)
  tags = sorted(set(reference) - set(_TIMING_TAGS))
  assert 'd_loss' in tags and 'g_loss' in tags
  every_step = list(range(1, NUM_TRAIN_STEPS + 1))
  for tag in tags:
    want_steps, want = reference[tag]
    assert want_steps.tolist() == every_step, tag
    got_steps, got = resumed[tag]
    missing = sorted(set(every_step) - set(got_steps.tolist()))
    assert not missing, f'{tag}: no record of steps {missing}'
    # TensorBoard keeps float32; metrics.jsonl the float64 of the same float32 value.
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32), err_msg=tag)
  # And once each in the files themselves (read_scalars keeps one value per step, TensorBoard
  # shows every point): the steps logged after a killed run's last checkpoint were set aside.
  records = []
  for path in sorted(workdir.glob('events.out.tfevents*')):
    records += [(v.tag, e.step) for e in run_logs._events(path)  # pylint: disable=protected-access
                for v in e.summary.value]
  if (workdir / 'metrics.jsonl').is_file():
    for line in (workdir / 'metrics.jsonl').read_text().splitlines():
      record = json.loads(line)
      records += [(tag, record['step']) for tag in record if tag != 'step']
  twice = sorted({r for r in records if records.count(r) > 1})
  assert not twice, f'logged more than once: {twice[:10]}'
