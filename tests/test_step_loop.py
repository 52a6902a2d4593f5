"""Fused training steps (dcgan_jax.step_loop): where chunks end, and that a fused run trains the
same as step-by-step dispatch, resumes bit for bit, and still stops on a non-finite loss.

Runs use the tiny digits config of tests/tiny_configs.py (8x8 images, width 8, batch 16) on the
8 fake CPU devices of conftest.
"""
import gc
import logging
import re
import types
import weakref

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import run_logs
from dcgan_jax import step_loop
from dcgan_jax import train
from dcgan_jax import train_metrics
from dcgan_jax import writers
from dcgan_jax.data import device_resident
from dcgan_jax import train_step as train_step_lib
from dcgan_jax.errors import UserError

from test_train import _checkpoint_steps, _tree_leaves  # pylint: disable=g-bad-import-order
from tiny_configs import tiny_config  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _chunks(start, limit, steps_per_epoch, steps_per_dispatch, boundaries):
  chunks, step = [], start
  while step < limit:
    end = step_loop.chunk_end(step, limit, steps_per_epoch, steps_per_dispatch,
                              lambda d: d in boundaries)
    chunks.append((step, end))
    step = end
  return chunks


def test_chunks_end_at_host_work_epochs_multiples_and_the_limit():
  assert _chunks(0, 23, steps_per_epoch=10, steps_per_dispatch=4, boundaries={6}) == [
      (0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 16), (16, 20), (20, 23)]
  # A long dispatch is cut by epochs and boundaries only.
  assert _chunks(0, 25, steps_per_epoch=10, steps_per_dispatch=100, boundaries={3, 15}) == [
      (0, 3), (3, 10), (10, 15), (15, 20), (20, 25)]
  assert _chunks(7, 8, 10, 100, set()) == [(7, 8)]
  assert _chunks(0, 5, 10, 1, set()) == [(i, i + 1) for i in range(5)]


@pytest.mark.parametrize('resume_at', [3, 6, 10, 11])
def test_a_run_resumed_at_a_boundary_cuts_the_same_chunks(resume_at):
  boundaries = {3, 6, 11, 17}
  straight = _chunks(0, 30, 10, 4, boundaries)
  resumed = _chunks(resume_at, 30, 10, 4, boundaries)
  assert resumed == [c for c in straight if c[0] >= resume_at]


@pytest.mark.parametrize('value', [0, -3, 2.5, 'many', None])
def test_bad_steps_per_dispatch_is_a_user_error(value):
  with pytest.raises(UserError, match='steps_per_dispatch must be a positive integer'):
    step_loop.check_steps_per_dispatch(value)
  assert step_loop.check_steps_per_dispatch(7) == 7


def test_a_fused_loop_is_freed_with_its_data_when_dropped():
  """No reference cycle: a finished run's device-resident dataset is freed when the run returns,
  not when Python's cyclic collector next runs (a sweep in one process kept up to five runs'
  datasets on the device: their FusedSteps program closed over the FusedSteps itself)."""
  generator = models.Generator(image_size=8, channels=1, latent_dim=4, width=4)
  discriminator = models.Discriminator(image_size=8, channels=1, width=4)
  step_fn = parallel.DataParallelStep(generator, discriminator, train_step_lib.StepConfig(),
                                      parallelism='shard_map')
  sampler = device_resident.DeviceResidentSampler(
      np.zeros((32, 8, 8, 1), np.uint8), global_batch=16, seed=0, mesh=step_fn.mesh)
  fused = step_loop.FusedSteps(step_fn, sampler, lambda *args: args[:2], steps_per_dispatch=4)
  refs = [weakref.ref(fused), weakref.ref(sampler)]
  gc.disable()
  try:
    del fused, sampler
    assert [ref() for ref in refs] == [None, None]
  finally:
    gc.enable()


def _non_canonical_convolutions(hlo_text):
  """The dim_labels of a compiled program's convolutions that XLA:CPU's fast (Eigen) kernels do
  not take: all but input NHWC, kernel HWIO, output NHWC (its
  PotentiallyImplementedAsEigenConvolution); those run as XLA's naive loop nest."""
  labels = re.findall(r' convolution\(.*?dim_labels=([^,\s]+)', hlo_text)
  assert labels, 'no convolutions found: has the HLO text format changed?'
  return [label for label in labels if not re.fullmatch(r'b\d+f_\d+io->b\d+f', label)]


def test_on_cpu_only_the_unlooped_step_keeps_the_fast_convolutions(tfds_dir):
  """Why steps_per_dispatch > 1 is 20-30x slower per step on CPU (configs/default.py, 2 cores:
  ~1 s against 30-50 ms), without timing anything: XLA:CPU canonicalises convolutions for its
  Eigen kernels in the entry computation only, so the gradient convolutions inside the fused
  loop's body keep autodiff's dimension numbers, while the one-step program (no loop) has none
  left. If a jaxlib canonicalises loop bodies too, this fails: then drop CPU_LOOP_WARNING and
  the README's and config's advice against fusing on CPU."""
  config = tiny_config(tfds_dir)
  step_fn = parallel.DataParallelStep(models.generator_from_config(config),
                                      models.discriminator_from_config(config),
                                      train_step_lib.StepConfig.from_config(config),
                                      parallelism='shard_map')
  if step_fn.mesh.devices.flat[0].platform != 'cpu':
    pytest.skip('checks what XLA:CPU compiles')
  sampler = device_resident.DeviceResidentSampler(
      np.zeros((64, 8, 8, 1), np.uint8), global_batch=16, seed=0, mesh=step_fn.mesh)
  key = jax.random.key(1)
  state = step_fn.place_state(train.create_train_state(config, jax.random.key(0), 4))
  names = list(jax.eval_shape(step_fn.mapped, state, sampler.batch(0), key)[1])
  collection_cls = train_metrics.make_metrics_collection(names)
  slow = {}
  for steps_per_dispatch in (1, 2):
    fused = step_loop.FusedSteps(step_fn, sampler, train_metrics.make_accumulate(
        collection_cls, False, jit=False), steps_per_dispatch)
    text = fused.compiled_text(state, collection_cls.empty(),
                               train_metrics.NonFiniteTracker.empty(), key, 0,
                               steps_per_dispatch)
    slow[steps_per_dispatch] = _non_canonical_convolutions(text)
  assert slow[1] == []
  assert slow[2], 'XLA:CPU now gives looped convolutions its fast path (see the docstring)'


def _count_chunks(monkeypatch, instances=None):
  """Records each chunk (and, if given a list, each FusedSteps made)."""
  calls = []
  original = step_loop.FusedSteps.__call__
  original_init = step_loop.FusedSteps.__init__

  def counted(self, state, collection, tracker, train_key, step, end):
    calls.append((step, end))
    return original(self, state, collection, tracker, train_key, step, end)

  def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    if instances is not None:
      instances.append(self)

  monkeypatch.setattr(step_loop.FusedSteps, '__call__', counted)
  monkeypatch.setattr(step_loop.FusedSteps, '__init__', init)
  return calls


def test_fused_run_trains_like_step_by_step_dispatch(tfds_dir, tmp_path, monkeypatch, caplog):
  # 1797 digits / 64 = 28 steps per epoch: 34 steps cross an epoch end.
  # FID every 6 steps, but without weights it is off: it must not cut chunks (it did).
  config = tiny_config(tfds_dir, device_resident='always', batch_size=64, num_train_steps=34,
                       log_every_steps=12, checkpoint_every_steps=20, sample_every_steps=10,
                       eval_every_steps=6)
  reported = _record_progress_calls(monkeypatch)
  per_step = train.train_and_evaluate(dict_config(config, steps_per_dispatch=1),
                                      tmp_path / 'per_step')
  instances = []
  chunks = _count_chunks(monkeypatch, instances)
  caplog.clear()  # The per-step run's lines may be here (at INFO where a program set it).
  with caplog.at_level(logging.INFO):
    fused = train.train_and_evaluate(dict_config(config, steps_per_dispatch=8),
                                     tmp_path / 'fused')
  # clu's console line ran its own clock over other windows (11.7 steps/s printed beside a
  # logged steps_per_sec of 12.02); it reports over the logged windows now. (The programs'
  # log filter, installed by earlier tests in this process, rewords clu's 'Setting work unit
  # notes: ' as 'Progress: '.)
  printed = [float(m.group(1)) for m in re.finditer(
      r'(?:Setting work unit notes|Progress): ([0-9.]+) steps/s', caplog.text)]
  steps, logged = run_logs.read_scalars(tmp_path / 'fused')['steps_per_sec']
  np.testing.assert_array_equal(steps, [12, 24, 34])
  if writers.have_tensorflow():  # clu's ReportProgress (else writers.ProgressLogger).
    np.testing.assert_allclose(printed, logged, rtol=0.05, atol=0.05)  # (Printed to 0.1.)
  # The progress clock starts when the first dispatch has run (the fused one at its last step,
  # 8: steps 1..7 would count as taking no time), then every step is reported once.
  assert reported == [list(range(1, 35)), list(range(8, 35))]
  assert chunks == [(0, 8), (8, 10), (10, 12), (12, 16), (16, 20), (20, 24), (24, 28), (28, 30),
                    (30, 32), (32, 34)]
  # Every chunk length, epoch and fresh metric accumulator ran the one compiled program.
  assert len(instances) == 1 and instances[0]._run._cache_size() == 1  # pylint: disable=protected-access
  # On CPU the run warns that fusing costs far more than it saves there (see the test above).
  cpu_warnings = [r for r in caplog.records
                  if r.getMessage() == step_loop.CPU_LOOP_WARNING % 8]
  assert len(cpu_warnings) == (1 if jax.devices()[0].platform == 'cpu' else 0)
  assert _checkpoint_steps(tmp_path / 'fused') == _checkpoint_steps(tmp_path / 'per_step')
  assert int(fused.step) == 34
  for a, b in zip(_tree_leaves(per_step), _tree_leaves(fused)):
    if a.dtype.kind == 'f':
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    else:
      np.testing.assert_array_equal(a, b)
  # The sample grids (queued behind a chunk that donates the state they come from) too.
  for step in (10, 20, 30, 34):
    grids = []
    for name in ('per_step', 'fused'):
      with Image.open(tmp_path / name / 'samples' / f'step_{step:06d}.png') as image:
        grids.append(np.asarray(image).astype(np.int16))
    np.testing.assert_allclose(grids[0], grids[1], atol=1)
  # The logged averages (over the same steps, from the same batches) agree too.
  scalars = {name: run_logs.read_scalars(tmp_path / name) for name in ('per_step', 'fused')}
  for tag in ('d_loss', 'g_loss', 'd_real', 'd_fake_before'):
    np.testing.assert_array_equal(scalars['fused'][tag][0], [12, 24, 34])
    np.testing.assert_array_equal(scalars['fused'][tag][0], scalars['per_step'][tag][0])
    np.testing.assert_allclose(scalars['fused'][tag][1], scalars['per_step'][tag][1], rtol=1e-4)


def test_progress_clock_starts_after_the_first_dispatch_and_reports_at_the_logs(monkeypatch):
  """Dispatch is asynchronous: a clock started when the compiling first dispatch returned
  counted steps that were only queued (2519 steps/s logged at step 5 of a run doing 25). It
  starts when that dispatch has finished; later steps are reported at the logs, with the time
  their metrics arrived, and no other wait for the device."""
  events = []
  monkeypatch.setattr(train_metrics.jax, 'block_until_ready', lambda x: events.append('wait'))
  monkeypatch.setattr(train_metrics.time, 'monotonic', lambda: 42.0)
  clock = train_metrics.ProgressClock(lambda step, t: events.append((step, t)))
  state = types.SimpleNamespace(step='state.step')
  assert clock.start is None
  clock.logged(3, 1.0)  # Nothing before the clock starts.
  clock.dispatched(3, state)  # A fused chunk of steps 1..3.
  for done in (4, 6, 10):  # Later dispatches neither wait nor report.
    clock.dispatched(done, state)
  assert events == ['wait', (3, 42.0)] and clock.start == (42.0, 3)
  events.clear()
  clock.logged(5, 50.0)
  clock.logged(5, 51.0)  # Already reported.
  clock.logged(10, 60.0)
  assert events == [(4, 50.0), (5, 50.0)] + [(step, 60.0) for step in range(6, 11)]


def _record_progress_calls(monkeypatch):
  """Lists, per run, the steps the loop reports to its progress action."""
  runs = []
  create_progress = writers.create_progress

  def create(*args, **kwargs):
    progress, steps = create_progress(*args, **kwargs), []
    runs.append(steps)

    class Recorded:

      def __call__(self, step, t=None):
        steps.append(step)
        return progress(step, t)

      def __getattr__(self, name):
        return getattr(progress, name)

    return Recorded()

  monkeypatch.setattr(writers, 'create_progress', create)
  return runs


def dict_config(config, **overrides):
  config = config.copy_and_resolve_references()
  config.update(overrides)
  return config


def test_fused_resume_is_bit_identical(tfds_dir, tmp_path, monkeypatch):
  """One 8-step chunk == 3 steps, a restart from the checkpoint, then 5 more (3 + 5 chunks)."""
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8,
                       checkpoint_every_steps=0, sample_every_steps=0, log_every_steps=0,
                       steps_per_dispatch=100)
  chunks = _count_chunks(monkeypatch)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  train.train_and_evaluate(dict_config(config, num_train_steps=3), tmp_path / 'resumed')
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  assert chunks == [(0, 8), (0, 3), (3, 8)]
  for a, b in zip(_tree_leaves(straight), _tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def poison_g_loss_at(monkeypatch, bad_step):
  """Makes the train step report a NaN g_loss for the update that completes ``bad_step``."""
  original = train_step_lib.make_train_step

  def poisoned_make_train_step(*args, **kwargs):
    step = original(*args, **kwargs)

    def poisoned(state, batch, rng):
      new_state, metrics = step(state, batch, rng)
      bad = new_state.step == bad_step
      return new_state, dict(metrics, g_loss=jax.numpy.where(bad, np.nan, metrics['g_loss']))

    return poisoned

  monkeypatch.setattr(parallel, 'make_train_step', poisoned_make_train_step)


@pytest.mark.parametrize('steps_per_dispatch', [1, 100])
def test_a_non_finite_loss_inside_a_chunk_stops_the_run(tfds_dir, tmp_path, monkeypatch,
                                                         steps_per_dispatch):
  poison_g_loss_at(monkeypatch, 3)
  chunks = _count_chunks(monkeypatch)
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8,
                       checkpoint_every_steps=2, log_every_steps=4, sample_every_steps=0,
                       steps_per_dispatch=steps_per_dispatch)
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite g_loss at step 3; the last good checkpoint \(step 2\)'):
    train.train_and_evaluate(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == [2]
  # Found where the host next looks (the checkpoint after step 4), whatever the chunking.
  one_step_chunks = [(s, s + 1) for s in range(4)]
  assert chunks == (one_step_chunks if steps_per_dispatch == 1 else [(0, 2), (2, 4)])
