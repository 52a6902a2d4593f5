"""Two real processes (jax.distributed on 127.0.0.1, gloo CPU collectives), 2 devices each, give
the same state as one process with 4 devices, and generate the same images from it (each
process its share, on its own devices)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), 'multiprocess_step_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices, parallelism):
  env = dict(os.environ)
  env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={devices} '
                      + os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''))
  env['PARALLELISM'] = parallelism
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.mark.slow
@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_two_processes_match_one_process(tmp_path, parallelism):
  single = tmp_path / 'single.npz'
  subprocess.run([sys.executable, WORKER, str(single), '1', '0', '0'], check=True,
                 env=_env(4, parallelism), timeout=300)
  port = _free_port()
  outs = [tmp_path / f'proc{i}.npz' for i in range(2)]
  procs = [subprocess.Popen([sys.executable, WORKER, str(outs[i]), '2', str(i), str(port)],
                            env=_env(2, parallelism), stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  ref = np.load(single)
  np.testing.assert_array_equal(ref['gathered_rows'], np.arange(14).reshape(7, 2))
  assert ref['generated'].shape == (7, 8 * 8 * 1)  # Every process's share of the images.
  for out in outs:
    got = np.load(out)
    assert set(got.files) == set(ref.files)
    for name in ref.files:
      np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
