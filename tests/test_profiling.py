"""Profiling a window of training steps (dcgan_jax.profiling, config.profile_steps).

Runs use the tiny digits config of tests/test_train.py on the 8 fake CPU devices of conftest;
the traces are jax.profiler's own (no TensorFlow needed), read back from perfetto_trace.json.gz.
"""
import gzip
import json
import logging

import jax
import ml_collections
import numpy as np
import pytest

from dcgan_jax import parallel
from dcgan_jax import profiling
from dcgan_jax import train
from dcgan_jax import train_step as train_step_lib
from dcgan_jax.errors import UserError

from test_train import tiny_config  # pylint: disable=g-bad-import-order


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


@pytest.mark.parametrize('steps_per_dispatch, annotated', [
    (1, [2, 3, 4]),  # One annotation per step: steps 3 to 5 (step_num counts steps done before).
    (8, [2]),  # One fused chunk, cut at the window's edges (steps done 2 and 5).
])
def test_the_window_of_steps_is_traced(tfds_dir, tmp_path, caplog, steps_per_dispatch,
                                       annotated):
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8, log_every_steps=8,
                       checkpoint_every_steps=8, sample_every_steps=0, profile_steps=3,
                       profile_skip_steps=2, steps_per_dispatch=steps_per_dispatch)
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 8
  traces = _traces(tmp_path)
  assert len(traces) == 1
  assert _annotated_steps(traces[0]) == annotated
  assert list(traces[0].parent.glob('*.xplane.pb'))  # What TensorBoard's profile plugin reads.
  assert 'Profiled steps 3 to 5' in caplog.text
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


def test_a_run_failing_inside_the_window_still_writes_its_trace(tfds_dir, tmp_path,
                                                                monkeypatch):
  original = train_step_lib.make_train_step

  def poisoned_make_train_step(*args, **kwargs):
    step = original(*args, **kwargs)

    def poisoned(state, batch, rng):
      new_state, metrics = step(state, batch, rng)
      bad = new_state.step == 3
      return new_state, dict(metrics, g_loss=jax.numpy.where(bad, np.nan, metrics['g_loss']))

    return poisoned

  monkeypatch.setattr(parallel, 'make_train_step', poisoned_make_train_step)
  config = tiny_config(tfds_dir, device_resident='always', num_train_steps=8,
                       checkpoint_every_steps=2, log_every_steps=8, sample_every_steps=0,
                       profile_steps=6, profile_skip_steps=1)
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
    train.validate_config(tiny_config(tfds_dir, profile_skip_steps=-1))
