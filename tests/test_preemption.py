"""SIGTERM and Ctrl-C stop a training run after the step in flight, with a checkpoint of it.

Three levels: the signal handling itself (dcgan_jax.preemption, in this process), the training
loop (``train_and_evaluate`` in this process, the signal raised at a chosen step, then resumed
to the end and compared with a run never stopped), and the command line as schedulers and
people use it (a real signal from outside to ``python -m dcgan_jax.main``; and two processes of
one run, where only one gets SIGTERM and both must stop at the same step).
"""
import gc
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import jax
import numpy as np
from PIL import Image
import pytest

from dcgan_jax import preemption
from dcgan_jax import run_logs
from dcgan_jax import train
from dcgan_jax import train_hooks
from dcgan_jax import train_metrics

_ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_TENSORFLOW_RUNNER = str(_ROOT / 'tests' / 'no_tensorflow_runner.py')
_STOPPED = re.compile(r'Stopped by (SIGTERM|SIGINT \(Ctrl-C\)) at step (\d+): its checkpoint is '
                      r'saved in .*; run the same command \(or train_and_evaluate call\) again to '
                      r'resume from it\.')


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal():
  """Each test starts with the SIGINT handler Python gives a program run in a terminal.

  A shell starts a background job (`pytest ... &` in a script, nohup) with SIGINT ignored; the
  library then rightly stays deaf to Ctrl-C (test_an_ignored_signal_stays_ignored), and so would
  the programs these tests start, since an ignored signal stays ignored across exec. A handler
  installed here is reset to the default by exec, so those programs get Python's own again."""
  saved = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, saved)


@pytest.fixture
def restore_handlers():
  """Whatever a test does to SIGTERM/SIGINT, they are as before afterwards."""
  saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  yield saved
  for signum, handler in saved.items():
    signal.signal(signum, handler)


# ---- the handlers -----------------------------------------------------------------------------


def test_first_signal_asks_to_stop_and_the_second_acts_as_before(restore_handlers):
  with preemption.StopSignals() as stop:
    assert stop.requested(0, 1) is None
    assert signal.getsignal(signal.SIGINT) != restore_handlers[signal.SIGINT]
    signal.raise_signal(signal.SIGINT)  # Handled: no KeyboardInterrupt here.
    assert stop.requested(1, 2) == signal.SIGINT
    assert stop.requested(2, 3) == signal.SIGINT  # It stays asked.
    # The previous handlers are back at once: a second Ctrl-C interrupts immediately.
    assert signal.getsignal(signal.SIGINT) is restore_handlers[signal.SIGINT]
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  for signum, handler in restore_handlers.items():
    assert signal.getsignal(signum) is handler


def test_a_ctrl_c_during_start_up_that_python_dropped_stops_before_the_first_step(
    restore_handlers, monkeypatch):
  """Raised inside JAX's garbage-collection callback, the KeyboardInterrupt was reported as
  "Exception ignored" and lost: the run trained to its end. The program's start-up handler
  remembers it, and the training loop's StopSignals raises it again."""
  monkeypatch.setattr(preemption, '_start_up_interrupted', threading.Event())
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  signal.signal(signal.SIGINT, signal.default_int_handler)
  preemption.listen_during_start_up()
  with preemption.StopSignals() as stop:  # No Ctrl-C yet: listens as always.
    assert stop.requested(0, 1) is None
  assert signal.getsignal(signal.SIGINT) is preemption.interrupt_start_up  # Restored.

  def dropping_callback():  # What Python does with an exception in a gc callback.
    try:
      signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
      pass

  dropping_callback()
  # Python's "Exception ignored ... KeyboardInterrupt" report is not printed; others are.
  import types  # pylint: disable=g-import-not-at-top
  for error in (KeyboardInterrupt(), ValueError()):
    sys.unraisablehook(types.SimpleNamespace(exc_value=error))
  assert [type(r.exc_value) for r in reported] == [ValueError]
  with pytest.raises(KeyboardInterrupt):
    preemption.StopSignals().install()
  assert signal.getsignal(signal.SIGINT) is preemption.interrupt_start_up  # Nothing installed.


# Runs `python -m dcgan_jax.main` and sends it SIGINT while it imports ml_collections (the
# program's first imports, before its main function), then reports what `--help` would not.
_CTRL_C_WHILE_IMPORTING = r"""
import importlib.abc, os, runpy, signal, sys

class CtrlCOnImport(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == 'ml_collections':
      sys.meta_path.remove(self)
      os.kill(os.getpid(), signal.SIGINT)  # Handled at the next bytecode: inside the import.
    return None

sys.meta_path.insert(0, CtrlCOnImport())
sys.argv = ['dcgan_jax.main', '--config=configs/default.py', '--workdir=' + sys.argv[1]]
runpy.run_module('dcgan_jax.main', run_name='__main__', alter_sys=True)
print('trained anyway')
"""


def test_a_ctrl_c_while_the_program_imports_stops_it_in_one_line(tmp_path):
  """Before the program's own start-up handler exists (its imports: ~0.1-0.3 s), Ctrl-C was
  Python's KeyboardInterrupt with a traceback of the import; now one line, exit 130."""
  result = subprocess.run(
      [sys.executable, '-c', _CTRL_C_WHILE_IMPORTING, str(tmp_path / 'run')], cwd=_ROOT,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 128 + signal.SIGINT, (result.returncode, result.stderr[-3000:])
  assert result.stderr == 'Interrupted while starting: nothing ran.\n', result.stderr[-3000:]
  assert 'trained anyway' not in result.stdout
  assert not (tmp_path / 'run').exists()


def test_stopping_at_once_does_not_wait_for_threads_a_broken_off_save_left():
  """A second Ctrl-C during the stop checkpoint breaks off orbax's save; its threads then never
  finished, and Python's exit waited for them (minutes, 1 try in 10). The program now ends
  at once, after its one line."""
  code = ('import threading; from dcgan_jax import main\n'
          'threading.Thread(target=threading.Event().wait).start()  # Never ends, not a daemon.\n'
          'def interrupted(*args, **kwargs): raise KeyboardInterrupt\n'
          'main.app.run = interrupted\n'
          'main.run()\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=_ROOT, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 128 + signal.SIGINT, result.stderr[-3000:]
  assert result.stderr.startswith('Interrupted: stopped at once'), result.stderr[-3000:]
  assert len(result.stderr.splitlines()) == 1, result.stderr[-3000:]


def test_importing_the_program_module_leaves_sigint_alone():
  """Only `python -m dcgan_jax.main` takes SIGINT while importing; a library import does not."""
  code = ('import signal; import dcgan_jax.main; '
          'assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; print("ok")')
  result = subprocess.run([sys.executable, '-c', code], cwd=_ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.stdout.strip() == 'ok', result.stderr[-3000:]


def test_sigterm_is_caught_and_the_handlers_are_restored_on_exit(restore_handlers):
  stop = preemption.StopSignals()
  stop.install()
  try:
    signal.raise_signal(signal.SIGTERM)  # Without the handler this would end the process.
    assert stop.requested(4, 7) == signal.SIGTERM
  finally:
    stop.restore()
  stop.restore()  # Idempotent.
  for signum, handler in restore_handlers.items():
    assert signal.getsignal(signum) is handler


def test_an_ignored_signal_stays_ignored(restore_handlers):
  del restore_handlers
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # As in a background job of a shell script.
  with preemption.StopSignals() as stop:
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.raise_signal(signal.SIGINT)
    assert stop.requested(0, 1) is None
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_outside_the_main_thread_nothing_changes(restore_handlers):
  seen = {}

  def run():
    with preemption.StopSignals() as stop:
      seen['handlers'] = {s: signal.getsignal(s) for s in restore_handlers}
      seen['requested'] = stop.requested(0, 1)

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == {'handlers': restore_handlers, 'requested': None}


def test_the_stop_exception_names_the_signal_step_and_exit_status():
  stopped = preemption.TrainingStopped(signal.SIGTERM, 37, '/tmp/run')
  assert isinstance(stopped, KeyboardInterrupt)  # Not swallowed by `except Exception`.
  assert (stopped.signal_number, stopped.step, stopped.exit_status) == (signal.SIGTERM, 37, 143)
  assert _STOPPED.fullmatch(str(stopped)).groups() == ('SIGTERM', '37')
  assert preemption.TrainingStopped(signal.SIGINT, 5, '/w').exit_status == 130


# ---- the training loop ------------------------------------------------------------------------


@pytest.fixture(scope='module')
def images_file(tmp_path_factory):
  # 192 images: epochs of 12 steps of 16, so fused chunks of 3 end at 3, 6, 9 and 12.
  path = tmp_path_factory.mktemp('data') / 'images.npy'
  np.save(path, np.random.default_rng(0).integers(0, 256, (192, 8, 8, 1), dtype=np.uint8))
  return path


def _config(images_file, **overrides):
  config = train.load_config(
      'configs/default.py', dataset='array', dataset_path=str(images_file), image_size=8,
      generator_width=8, discriminator_width=8, latent_dim=8, batch_size=16,
      num_train_steps=12, log_every_steps=6, checkpoint_every_steps=6, sample_every_steps=0,
      quality_every_steps=0, num_sample_images=4)
  config.update(overrides)
  return config


def _raise_signal_after(monkeypatch, step, signum):
  """Raises `signum` in this process right after the loop dispatches the program that trains
  `step` (with fused chunks, the chunk that holds it)."""
  dispatched = train_metrics.ProgressClock.dispatched
  last_done = {}

  def dispatched_then_signal(clock, done, state):
    dispatched(clock, done, state)
    before, last_done[id(clock)] = last_done.get(id(clock), -1), done
    if before < step <= done:
      signal.raise_signal(signum)

  monkeypatch.setattr(train_metrics.ProgressClock, 'dispatched', dispatched_then_signal)


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


@pytest.mark.parametrize('steps_per_dispatch,stop_step', [(1, 7), (3, 9)])
def test_a_stopped_run_saves_its_step_and_resumes_bit_identical(
    images_file, tmp_path, monkeypatch, restore_handlers, steps_per_dispatch, stop_step):
  """SIGTERM after step 7: a checkpoint of the step in flight (with fused chunks of 3 steps,
  the chunk (6, 9]), not only the periodic one of step 6; resuming ends where a run never
  stopped ends, bit for bit."""
  config = _config(images_file, steps_per_dispatch=steps_per_dispatch)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  threads = set(threading.enumerate())
  gc.collect()
  arrays = len(jax.live_arrays())

  _raise_signal_after(monkeypatch, 7, signal.SIGTERM)
  with pytest.raises(preemption.TrainingStopped) as stopped:
    train.train_and_evaluate(config, tmp_path / 'stopped')
  assert (stopped.value.signal_number, stopped.value.step) == (signal.SIGTERM, stop_step)
  assert _checkpoint_steps(tmp_path / 'stopped') == [6, stop_step]
  for signum, handler in restore_handlers.items():  # The loop gave the signals back.
    assert signal.getsignal(signum) is handler
  # `stopped` keeps the traceback, as a notebook keeps a stopped cell's: the run's threads have
  # ended all the same (clu's progress worker stayed), and its frames no longer hold its device
  # arrays (the dataset and both states stayed allocated beside the next run's).
  assert set(threading.enumerate()) <= threads, set(threading.enumerate()) - threads
  gc.collect()
  assert len(jax.live_arrays()) <= arrays, f'{len(jax.live_arrays()) - arrays} arrays more'
  assert '_train_loop' in [frame.name for frame in traceback.extract_tb(stopped.tb)]  # Where.
  assert not (tmp_path / 'stopped' / 'samples' / 'progress.gif').exists()  # No final hooks.

  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, tmp_path / 'stopped')
  assert _checkpoint_steps(tmp_path / 'stopped') == [6, stop_step, 12]
  assert int(resumed.step) == int(straight.step) == 12
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The steps between the last log and the stop are logged at the stop, as a shorter window:
  # with the resume's window they average to the uninterrupted run's point at step 12.
  logged = run_logs.read_scalars(tmp_path / 'stopped')['d_loss']
  want = run_logs.read_scalars(tmp_path / 'straight')['d_loss']
  assert logged[0].tolist() == [6, stop_step, 12] and want[0].tolist() == [6, 12]
  weights = np.array([stop_step - 6, 12 - stop_step]) / 6
  np.testing.assert_allclose(weights @ logged[1][1:], want[1][1], rtol=1e-5)


def test_a_stopped_run_writes_the_sample_grid_it_had_queued(images_file, tmp_path, monkeypatch,
                                                            restore_handlers, caplog):
  """The grid of step 3 waits for a log or checkpoint (none before 10); the stop at 5 writes it,
  so the resumed run, which starts after step 5, leaves every grid a straight run would."""
  del restore_handlers
  config = _config(images_file, log_every_steps=10, checkpoint_every_steps=10,
                   sample_every_steps=3)
  _raise_signal_after(monkeypatch, 5, signal.SIGTERM)
  with pytest.raises(preemption.TrainingStopped):
    train.train_and_evaluate(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == [5]
  grids = lambda: sorted(p.name for p in (tmp_path / 'samples').glob('step_*.png'))
  assert grids() == ['step_000003.png']
  monkeypatch.undo()
  train.train_and_evaluate(config, tmp_path)
  assert grids() == [f'step_{s:06d}.png' for s in (3, 6, 9, 12)]
  # Killed after the grid of step 12 but before its checkpoint (here: the checkpoint deleted),
  # the run resumes from step 10, shortened to 11 steps: the grid of step 12 was of a run
  # trained again since, and stayed among this one's, a frame of its animation after the last.
  shutil.rmtree(tmp_path / 'checkpoints' / '12')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(dict(config.to_dict(), num_train_steps=11), tmp_path)
  assert grids() == [f'step_{s:06d}.png' for s in (3, 6, 9, 11)]
  assert re.search(r'The earlier run left 1 sample grid of steps after step 10, the checkpoint '
                   r'this run resumes from, which it trains again: set aside in '
                   r'.*rolled_back_logs', caplog.text)
  (aside,) = [d for d in (tmp_path / run_logs.ROLLED_BACK_DIR).iterdir()
              if (d / 'samples').is_dir()]
  assert [p.name for p in (aside / 'samples').iterdir()] == ['step_000012.png']
  with Image.open(tmp_path / 'samples' / 'progress.gif') as gif:
    assert gif.n_frames == 4


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_the_last_step_waits_for_the_final_checkpoint(
    images_file, tmp_path, monkeypatch, restore_handlers, signum):
  """After the loop the handlers used to be given back before the final save: one Ctrl-C
  then stopped at once, and every step since the last periodic checkpoint was lost."""
  config = _config(images_file, sample_every_steps=6)
  _raise_signal_after(monkeypatch, 12, signum)
  with pytest.raises(preemption.TrainingStopped) as stopped:
    train.train_and_evaluate(config, tmp_path)
  assert (stopped.value.signal_number, stopped.value.step) == (signum, 12)
  assert _checkpoint_steps(tmp_path) == [6, 12]
  for number, handler in restore_handlers.items():
    assert signal.getsignal(number) is handler
  # The final samples and scores are skipped (a stop was asked for); the grid of step 6 stays.
  grids = lambda: sorted(p.name for p in (tmp_path / 'samples').glob('*'))
  assert grids() == ['step_000006.png']
  assert not (tmp_path / train.FINISHED_FILE).exists()
  monkeypatch.undo()
  # Run again: the final samples are made now (they were promised to the resume), and nothing
  # else is written again (no second point at step 12).
  def logged_values():
    return sum(len(event.summary.value) for path in tmp_path.glob(run_logs.EVENTS_GLOB)
               for event in run_logs._events(path))  # pylint: disable=protected-access

  d_loss_steps = run_logs.read_scalars(tmp_path)['d_loss'][0].tolist()
  assert d_loss_steps[-1] == 12
  state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 12
  assert _checkpoint_steps(tmp_path) == [6, 12]
  assert grids() == ['progress.gif', 'step_000006.png', 'step_000012.png']
  assert run_logs.read_scalars(tmp_path)['d_loss'][0].tolist() == d_loss_steps
  assert json.loads((tmp_path / train.FINISHED_FILE).read_text()) == {'step': 12}
  # And once more: nothing to train, nothing written (not even an empty event file).
  before, files = logged_values(), sorted(tmp_path.glob(run_logs.EVENTS_GLOB))
  state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 12 and logged_values() == before
  assert sorted(tmp_path.glob(run_logs.EVENTS_GLOB)) == files
  # The checkpoints deleted, a new run starts afresh: the old run's record of its final outputs
  # goes, or this run's (stopped at its last step again) would count as made.
  shutil.rmtree(tmp_path / 'checkpoints')
  _raise_signal_after(monkeypatch, 12, signum)
  with pytest.raises(preemption.TrainingStopped):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / train.FINISHED_FILE).exists()
  # Nor are its grids and animation taken for this run's: they are set aside.
  assert grids() == ['step_000006.png']
  (aside,) = [d for d in (tmp_path / run_logs.ROLLED_BACK_DIR).iterdir()
              if (d / 'samples').is_dir()]
  assert sorted(p.name for p in (aside / 'samples').iterdir()) == [
      'progress.gif', 'step_000006.png', 'step_000012.png']


def test_a_ctrl_c_during_the_final_scores_says_the_final_step_is_saved(
    images_file, tmp_path, monkeypatch, restore_handlers, caplog):
  del restore_handlers
  config = _config(images_file)

  write_sample_grid = train_hooks.write_sample_grid

  def interrupted(*args, **kwargs):
    write_sample_grid(*args, **kwargs)  # Written, then the stop (among the final outputs).
    raise KeyboardInterrupt

  monkeypatch.setattr(train_hooks, 'write_sample_grid', interrupted)
  with pytest.raises(preemption.TrainingStopped) as stopped:
    train.train_and_evaluate(config, tmp_path)
  assert (stopped.value.signal_number, stopped.value.step) == (signal.SIGINT, 12)
  assert _checkpoint_steps(tmp_path) == [6, 12]
  # Launched again (a notebook's cell run again), the run makes what the stop skipped; it
  # said "nothing to train" and never wrote them.
  monkeypatch.undo()
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path)
  assert ('stopped after its final checkpoint (step 12) but before its final samples and '
          'scores; making them now') in caplog.text
  assert (tmp_path / 'samples' / 'step_000012.png').is_file()
  assert (tmp_path / 'samples' / 'progress.gif').is_file()
  assert _checkpoint_steps(tmp_path) == [6, 12]
  # The interrupted launch's final outputs never reached the logs (they reach them together,
  # at the end): the final grid is logged once, by the launch that finished.
  final_grids = [event.step for path in tmp_path.glob(run_logs.EVENTS_GLOB)
                 for event in run_logs._events(path)  # pylint: disable=protected-access
                 for value in event.summary.value if value.tag == 'samples']
  assert final_grids.count(12) == 1, final_grids
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, tmp_path)
  assert 'The checkpoint is already at step 12 >= num_train_steps 12; nothing to train' in (
      caplog.text)
  assert 'Models:' not in caplog.text  # (It came first, 40 lines of tables.)
  # With a changed setting: not told that config.json will hold it (it was not written).
  caplog.clear()
  saved_config = (tmp_path / 'config.json').read_text()
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(dict(config.to_dict(), g_learning_rate=1e-4), tmp_path)
  nothing = [r.getMessage() for r in caplog.records if 'nothing to train' in r.getMessage()]
  assert len(nothing) == 1 and nothing[0].endswith(
      "are not applied: config.json keeps the run's."), nothing
  assert 'g_learning_rate' in nothing[0] and 'Resuming with changed settings' not in caplog.text
  assert (tmp_path / 'config.json').read_text() == saved_config


# ---- the command line -------------------------------------------------------------------------


def _command(workdir, images_file, num_train_steps=100_000):
  """A tiny run far too long to end by itself (~1 ms/step), without TensorFlow."""
  return [sys.executable, NO_TENSORFLOW_RUNNER, '-m', 'dcgan_jax.main',
          '--config=configs/default.py', f'--workdir={workdir}', '--config.dataset=array',
          f'--config.dataset_path={images_file}', '--config.image_size=8',
          '--config.generator_width=8', '--config.discriminator_width=8',
          '--config.latent_dim=8', '--config.batch_size=8',
          f'--config.num_train_steps={num_train_steps}', '--config.log_every_steps=10',
          '--config.checkpoint_every_steps=100000', '--config.sample_every_steps=0',
          '--config.quality_every_steps=0', '--config.num_sample_images=4']


def _env(devices=1):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
              + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''))


def _wait_for_training(log_path, processes, timeout=240):
  """Returns once `log_path` shows a logged step (training runs), failing if a process ends."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if re.search(r'\] \[\d+\] ', log_path.read_text(errors='replace')):
      return
    assert all(p.poll() is None for p in processes), log_path.read_text()[-3000:]
    time.sleep(0.05)
  pytest.fail(f'no training step logged in {timeout} s')


def _start_training(workdir, images_file, log_path):
  """The long run in a process of its own, logging to ``log_path``; returns once it trains."""
  log = open(log_path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  process = subprocess.Popen(_command(workdir, images_file), cwd=_ROOT, env=_env(),
                             stdout=log, stderr=subprocess.STDOUT)
  _wait_for_training(log_path, [process])
  return process, log


def _finish(process, log, timeout=120):
  try:
    return process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    log.close()


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_the_command_saves_says_so_in_one_line_and_exits_128_plus_the_signal(
    images_file, tmp_path, signum):
  workdir = tmp_path / 'run'
  log_path = tmp_path / 'run.log'
  process, log = _start_training(workdir, images_file, log_path)
  process.send_signal(signum)
  assert _finish(process, log) == 128 + signum
  text = log_path.read_text()
  assert 'Traceback' not in text, text[-3000:]
  lines = _STOPPED.findall(text)
  assert len(lines) == 1, text[-3000:]
  assert text.rstrip().endswith(_STOPPED.search(text).group(0))  # The last line says it.
  stop_step = int(lines[0][1])
  assert stop_step >= 10 and _checkpoint_steps(workdir) == [stop_step]
  assert not list((workdir / 'checkpoints').glob('*tmp*'))  # Complete, not mid-write.

  # The same command resumes there (here with a nearer end, to finish in seconds).
  result = subprocess.run(_command(workdir, images_file, num_train_steps=stop_step + 5),
                          cwd=_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {stop_step}.' in result.stderr
  assert _checkpoint_steps(workdir) == [stop_step, stop_step + 5]
  if signum == signal.SIGTERM:  # (Once is enough: one more launch.)
    # --workdir alone goes on with the settings of the last start (config.json): the run is
    # finished at its new end. (configs/default.py's own settings would have been refused:
    # models of another shape.)
    result = subprocess.run(
        [sys.executable, NO_TENSORFLOW_RUNNER, '-m', 'dcgan_jax.main', f'--workdir={workdir}'],
        cwd=_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'No --config: {workdir} goes on with the settings' in result.stderr
    assert (f'already at step {stop_step + 5} >= num_train_steps {stop_step + 5}; nothing to '
            'train') in result.stderr, result.stderr[-3000:]
    assert _checkpoint_steps(workdir) == [stop_step, stop_step + 5]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_in_one_line_and_the_run_resumes(images_file, tmp_path):
  """The second SIGINT comes while the first one's checkpoint is saved, or (more often on 2
  cores) after the run has said it stopped: either way exit 130 (or death by the signal once
  all is saved) with no traceback, and a usable workdir."""
  workdir = tmp_path / 'run'
  log_path = tmp_path / 'run.log'
  process, log = _start_training(workdir, images_file, log_path)
  process.send_signal(signal.SIGINT)
  time.sleep(0.3)  # Handled (Python runs handlers between bytecodes), not coalesced.
  if process.poll() is None:
    process.send_signal(signal.SIGINT)
  returncode = _finish(process, log)
  text = log_path.read_text()
  assert 'Traceback' not in text, text[-3000:]
  last = text.rstrip().splitlines()[-1]
  # The second signal came while the first one's checkpoint was being saved (stopped at once),
  # or after it was saved and said so (the process then ends at once, killed by the signal).
  assert ((last.startswith('Interrupted: stopped at once') and returncode == 128 + signal.SIGINT)
          or (_STOPPED.search(last) and returncode in (128 + signal.SIGINT, -signal.SIGINT))
         ), (returncode, text[-3000:])
  result = subprocess.run(_command(workdir, images_file, num_train_steps=5), cwd=_ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(images_file, tmp_path):
  """JAX's preemption service: SIGTERM to process 1 only; both save one step and exit 143."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = tmp_path / 'run'
  processes, logs, log_paths = [], [], []
  for i in range(2):
    log_paths.append(tmp_path / f'process{i}.log')
    logs.append(open(log_paths[i], 'w', encoding='utf-8'))  # pylint: disable=consider-using-with
    processes.append(subprocess.Popen(
        _command(workdir, images_file) + [f'--coordinator_address=127.0.0.1:{port}',
                                          '--num_processes=2', f'--process_id={i}'],
        cwd=_ROOT, env=_env(), stdout=logs[i], stderr=subprocess.STDOUT))
  _wait_for_training(log_paths[0], processes)
  processes[1].send_signal(signal.SIGTERM)
  statuses = [_finish(p, log) for p, log in zip(processes, logs)]
  texts = [path.read_text() for path in log_paths]
  assert statuses == [143, 143], [t[-3000:] for t in texts]
  steps = [int(_STOPPED.search(t).group(2)) for t in texts]
  assert steps[0] == steps[1] >= 10, steps
  assert _checkpoint_steps(workdir) == [steps[0]]
  assert all('Traceback' not in t for t in texts)
