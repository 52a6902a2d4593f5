"""Profiling a window of training steps (dcgan_jax.profiling, config.profile_steps).

Runs use the tiny digits config of tests/tiny_configs.py on the 8 fake CPU devices of conftest;
the traces are jax.profiler's own (no TensorFlow needed), read back from perfetto_trace.json.gz.
"""
import gzip
import json
import logging

import jax
import ml_collections
import pytest

from dcgan_jax import profiling
from dcgan_jax import run_checks
from dcgan_jax import train
from dcgan_jax.errors import UserError

from test_step_loop import poison_g_loss_at  # pylint: disable=g-bad-import-order
from tiny_configs import tiny_config  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _traces(workdir):
  return sorted((workdir / profiling.PROFILE_DIR).rglob('perfetto_trace.json.gz'))


def _annotated_steps(trace_path):
  """The step numbers of the loop's 'train' annotations in a perfetto trace, in order."""
  with gzip.open(trace_path, 'rt', encoding='utf-8') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return sorted(int(e['args']['step_num']) for e in events
                if e.get('name') == 'train' and e.get('ph') == 'X')


@pytest.mark.parametrize('parallelism, steps_per_dispatch, annotated', [
    ('shard_map', 1, [2, 3, 4]),  # One annotation per step: steps 3 to 5 (step_num: steps done).
    ('shard_map', 8, [2]),  # One fused chunk, cut at the window's edges (steps done 2 and 5).
    ('pmap', 1, [2, 3, 4]),
])
def test_the_window_of_steps_is_traced(tfds_dir, tmp_path, caplog, parallelism,
                                       steps_per_dispatch, annotated):
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8, log_every_steps=8,
                       checkpoint_every_steps=8, sample_every_steps=0, profile_steps=3,
                       profile_skip_steps=2, steps_per_dispatch=steps_per_dispatch,
                       parallelism=parallelism)
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 8
  traces = _traces(tmp_path)
  assert len(traces) == 1
  assert _annotated_steps(traces[0]) == annotated
  assert list(traces[0].parent.glob('*.xplane.pb'))  # What TensorBoard's profile plugin reads.
  assert 'Profiled steps 3 to 5' in caplog.text
  # Read back: three steps (a fused chunk's annotation counts its steps), the step's operations.
  summary = profiling.summarise_trace(str(tmp_path))
  assert summary['steps'] == 3 and summary['trace'] == str(traces[0])
  assert summary['kernels_per_step'] > 0 and summary['busy_ms_per_step'] > 0
  assert summary['wall_ms_per_step'] > 0 and summary['top_ops']
  # The loop wrote the traced program's HLO beside the trace: operations carry their layer.
  assert (tmp_path / profiling.PROFILE_DIR / profiling.HLO_FILE).is_file()
  ops = ' '.join(row['name'] for row in summary['top_ops'])
  assert 'Discriminator' in ops and 'Generator' in ops
  # The profiler is off again: a new trace can start in this process.
  jax.profiler.start_trace(str(tmp_path / 'again'))
  jax.profiler.stop_trace()


def test_a_window_after_the_end_traces_nothing_and_says_so(tfds_dir, tmp_path, caplog):
  config = tiny_config(tfds_dir, num_train_steps=4, sample_every_steps=0, profile_steps=2,
                       profile_skip_steps=4)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / profiling.PROFILE_DIR).exists()
  assert 'no steps were profiled' in caplog.text and 'ended after 4 steps' in caplog.text


def test_a_trace_already_running_skips_the_window_and_training_goes_on(tfds_dir, tmp_path,
                                                                      caplog):
  config = tiny_config(tfds_dir, num_train_steps=4, sample_every_steps=0, profile_steps=2,
                       profile_skip_steps=1)
  jax.profiler.start_trace(str(tmp_path / 'mine'))  # E.g. a user's own trace around the run.
  try:
    with caplog.at_level(logging.WARNING):
      state = train.train_and_evaluate(config, tmp_path / 'run')
  finally:
    jax.profiler.stop_trace()  # Still the user's to stop: the run left it running.
  assert int(state.step) == 4
  assert 'profile_steps=2 skipped: jax.profiler could not start' in caplog.text
  assert not _traces(tmp_path / 'run')


def test_a_run_failing_inside_the_window_still_writes_its_trace(tfds_dir, tmp_path,
                                                                monkeypatch):
  poison_g_loss_at(monkeypatch, 3)
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8,
                       checkpoint_every_steps=2, log_every_steps=8, sample_every_steps=0,
                       profile_steps=6, profile_skip_steps=1,
                       # Checked in the loop, before the save at step 4 (a worker's check
                       # would stop the loop at its next log or save, at a step of its own).
                       background_checkpoints=False)
  with pytest.raises(train.NonFiniteLossError):  # Found at step 4, inside the window 2..7.
    train.train_and_evaluate(config, tmp_path)
  traces = _traces(tmp_path)
  assert len(traces) == 1 and _annotated_steps(traces[0]) == [1, 2, 3]
  jax.profiler.start_trace(str(tmp_path / 'again'))  # Fails if the run left the profiler on.
  jax.profiler.stop_trace()


@pytest.mark.parametrize('name, value', [
    ('profile_steps', -1), ('profile_steps', 1.5), ('profile_steps', 'ten'),
    ('profile_steps', True), ('profile_skip_steps', -3)])
def test_bad_profile_settings_are_one_clear_error(name, value):
  config = ml_collections.ConfigDict(dict({'profile_steps': 2, 'profile_skip_steps': 10},
                                          **{name: value}))
  with pytest.raises(UserError, match=rf'{name} must be an integer >= 0 \(got .*\); '
                                      'profile_steps=0 turns profiling off'):
    profiling.check_profile_config(config)
  assert profiling.check_profile_config(
      ml_collections.ConfigDict({'profile_steps': 3})) == (3, 10)  # Older configs: defaults.


def test_validate_config_checks_the_profile_settings(tfds_dir):
  with pytest.raises(UserError, match='profile_skip_steps must be an integer >= 0'):
    run_checks.validate_config(tiny_config(tfds_dir, profile_skip_steps=-1))


def _write_trace(folder, events):
  folder.mkdir(parents=True, exist_ok=True)
  with gzip.open(folder / profiling.PERFETTO_TRACE, 'wt', encoding='utf-8') as f:
    json.dump({'traceEvents': events}, f)


def test_summary_sums_device_time_per_kernel_and_per_jax_operation(tmp_path):
  """A GPU-like trace: kernels on a stream row name their HLO instruction, which the optimized
  HLO maps to the JAX operation; busy time is the union of overlapping kernels."""
  conv = 'jit(step)/transpose(jvp(Discriminator))/Conv_1/conv_general_dilated'
  hlo = '\n'.join([
      'HloModule jit_step',
      f'  %cudnn-conv.3 = (f32[8]) custom-call(%p), metadata={{op_name="{conv}" '
      'source_file="models.py"}',
      '  ROOT %fusion.1 = f32[8] fusion(%a), kind=kLoop, metadata={op_name="jit(step)/add"}'])
  assert profiling.hlo_op_names(hlo) == {
      'cudnn-conv.3': 'transpose(jvp(Discriminator))/Conv_1/conv_general_dilated',
      'fusion.1': 'add'}
  meta = [
      {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
      {'ph': 'M', 'pid': 1, 'tid': 7, 'name': 'thread_name',
       'args': {'name': 'Stream #7(Compute)'}},
      {'ph': 'M', 'pid': 9, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
  ]
  # Real GPU traces mix integer and string arguments, and not every event has the same ones.
  on_gpu = lambda ts, dur, name, op: {
      'ph': 'X', 'pid': 1, 'tid': 7, 'ts': ts, 'dur': dur, 'name': name,
      'args': ({'correlation_id': 5, 'hlo_op': op} if name == 'wgrad'
               else {'hlo_op': op, 'kernel_details': 'registers: 16'})}
  events = meta + [  # Two steps: a 10 us conv kernel overlapping a 4 us fusion, then 6 us apart.
      on_gpu(0.0, 10.0, 'wgrad', 'cudnn-conv.3'), on_gpu(8.0, 4.0, 'loop_add', 'fusion.1'),
      on_gpu(20.0, 10.0, 'wgrad', 'cudnn-conv.3'), on_gpu(36.0, 4.0, 'loop_add', 'fusion.1'),
      {'ph': 'X', 'pid': 9, 'tid': 1, 'ts': -5.0, 'dur': 20.0, 'name': 'train',
       'args': {'step_num': '0', 'steps': '1'}},
      {'ph': 'X', 'pid': 9, 'tid': 1, 'ts': 15.0, 'dur': 30.0, 'name': 'train',
       'args': {'step_num': '1', 'steps': '1'}},
  ]
  _write_trace(tmp_path / 'plugins' / 'profile' / 'run', events)
  summary = profiling.summarise_trace(str(tmp_path), hlo_text=hlo)
  assert summary['steps'] == 2  # From the two annotations.
  assert summary['kernels_per_step'] == 2
  assert summary['kernel_ms_per_step'] == pytest.approx(0.014)
  assert summary['busy_ms_per_step'] == pytest.approx((12 + 10 + 4) / 2 / 1e3)
  assert summary['wall_ms_per_step'] == pytest.approx(50 / 2 / 1e3)
  assert summary['device_processes'] == ['/device:GPU:0'] and summary['event_args'] == [
      'correlation_id', 'hlo_op', 'kernel_details']
  top = {row['name']: row for row in summary['top_ops']}
  assert top['transpose(jvp(Discriminator))/Conv_1/conv_general_dilated']['ms_per_step'] == (
      pytest.approx(0.010))
  assert top['add']['count_per_step'] == 1
  assert summary['top_kernels'][0]['name'] == 'wgrad'
  # Without the HLO the operations keep their HLO names.
  plain = profiling.summarise_trace(str(tmp_path))
  assert {row['name'] for row in plain['top_ops']} == {'cudnn-conv.3', 'fusion.1'}


def test_summary_of_a_real_cpu_trace_names_the_jax_scopes(tmp_path):
  @jax.jit
  def program(x):
    with jax.named_scope('first_layer'):
      y = jax.numpy.tanh(x @ x)
    # Keeps the two layers two operations: jax 0.12's XLA:CPU fuses the whole dot-tanh-dot-sin-
    # sum chain into one YNNPACK fusion, which (as any fusion) is named after its root's scope.
    y = jax.lax.optimization_barrier(y)
    with jax.named_scope('second_layer'):
      return jax.numpy.sin(y @ y).sum(axis=0)

  x = jax.numpy.ones((256, 256))
  hlo = program.lower(x).compile().as_text()
  program(x).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for i in range(3):
      with jax.profiler.StepTraceAnnotation('train', step_num=i, steps=1):
        out = program(x)
    out.block_until_ready()
  summary = profiling.summarise_trace(str(tmp_path), hlo_text=hlo)
  assert summary['steps'] == 3 and summary['device_processes'] == ['host (CPU)']
  names = ' '.join(row['name'] for row in summary['top_ops'])
  assert 'first_layer' in names and 'second_layer' in names
  assert summary['kernel_ms_per_step'] > 0


def test_summary_command_prints_the_report(tmp_path, capsys):
  _write_trace(tmp_path / 'profile' / 'plugins' / 'profile' / 'run', [
      {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/device:TPU:0'}},
      {'ph': 'M', 'pid': 1, 'tid': 2, 'name': 'thread_name', 'args': {'name': 'XLA Ops'}},
      {'ph': 'X', 'pid': 1, 'tid': 2, 'ts': 0.0, 'dur': 3.0, 'name': 'convolution.4',
       'args': {'hlo_op': 'convolution.4'}}])
  out_json = tmp_path / 'summary.json'
  profiling.main(['profiling', f'--workdir={tmp_path}', f'--json_out={out_json}', '--rows=5'])
  report = capsys.readouterr().out
  # A TPU trace has only its op rows: they are the device work.
  assert '1 steps on /device:TPU:0: 1 kernels/step' in report and 'convolution.4' in report
  assert json.loads(out_json.read_text())['kernel_ms_per_step'] == pytest.approx(0.003)
  # A --json_out that cannot be written: one line (was a FileNotFoundError traceback).
  for bad, message in ((tmp_path / 'nowhere' / 's.json', 'nowhere does not exist'),
                       (tmp_path, 'a folder; name a file in it')):
    with pytest.raises(SystemExit) as exit_info:
      profiling.main(['profiling', f'--workdir={tmp_path}', f'--json_out={bad}'])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('case, message', [
    ('no_trace', 'No perfetto_trace.json.gz under'),
    ('corrupt', 'is not a readable perfetto trace'),
    ('no_workdir', '--workdir is required'),
    ('bad_flag', 'rows'),
])
def test_summary_command_mistakes_are_one_line(tmp_path, capsys, case, message):
  argv = ['profiling', f'--workdir={tmp_path}']
  if case == 'corrupt':
    folder = tmp_path / 'profile' / 'x'
    folder.mkdir(parents=True)
    (folder / profiling.PERFETTO_TRACE).write_bytes(b'not gzip')
  elif case == 'no_workdir':
    argv = ['profiling']
  elif case == 'bad_flag':
    argv.append('--rows=0')
  with pytest.raises(SystemExit) as exit_info:
    profiling.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
