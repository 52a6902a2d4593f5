"""dcgan_jax.sync_points: where the processes of a run meet, and a failure on one ends all.

Two real processes (jax.distributed on 127.0.0.1) run tests/sync_points_worker.py; no devices
are used. The training program's own two-process failure is in tests/test_main_cli.py.
"""
import errno
import json
import os
import socket
import subprocess
import sys

from dcgan_jax import sync_points
from dcgan_jax.errors import UserError

WORKER = os.path.join(os.path.dirname(__file__), 'sync_points_worker.py')


def _run_two(scenario):
  """Runs the worker's ``scenario`` as two processes; returns [(returncode, stdout, stderr)]."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  processes = [subprocess.Popen([sys.executable, WORKER, scenario, str(i), str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  try:
    # Well beyond the seconds they take: a process left waiting fails the test in a minute.
    outputs = [p.communicate(timeout=60) for p in processes]
    return [(p.returncode, *output) for p, output in zip(processes, outputs)]
  finally:
    for p in processes:
      p.kill()


def test_one_process_passes_at_once():
  assert sync_points.sync('alone', 3) == [3]
  assert sync_points.agree('alone', 'mine') == 'mine'
  sync_points.report_failure(UserError('nobody to tell'))  # A no-op.


def test_the_failure_the_others_are_told_is_one_line():
  describe = sync_points._describe  # pylint: disable=protected-access
  assert describe(UserError('A mistake,\n  said in one sentence.')) == (
      'A mistake, said in one sentence.')
  assert describe(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/run/quality.json')) == (
      '/run/quality.json: No space left on device')
  assert describe(ValueError('a bug\nTraceback lines')) == 'ValueError: a bug'
  assert describe(KeyboardInterrupt()) == 'KeyboardInterrupt'


def test_a_failure_on_one_process_stops_the_other_at_the_next_point():
  """Process 1 fails between two points; process 0, waiting at the next one, stops at once with
  process 1's line (it waited an hour at a barrier, and process 1 five minutes at exit)."""
  (code0, out0, err0), (code1, out1, err1) = _run_two('fail')
  for out in (out0, out1):  # Before: every process's value, and process 0's for all.
    assert json.loads(out) == [[{'process': 0}, {'process': 1}], True]
  failure = 'The shard of process 1 is empty; use a larger split.'
  assert (code1, err1.strip().splitlines()[-1]) == (2, failure), err1[-3000:]
  assert (code0, err0.strip().splitlines()[-1]) == (
      2, f'Process 1 of this multi-process run failed, so process 0 stopped too: {failure}'
  ), err0[-3000:]


def test_processes_at_different_points_say_so_instead_of_waiting():
  for i, (code, _, stderr) in enumerate(_run_two('disagree')):
    assert code == 2, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"Process {i} is at sync point 'third_{i}' while process {1 - i} is at "
        f"'third_{1 - i}'.")
