"""Runs a module with one training step's loss made non-finite, for failure tests across
processes (in one process, tests/test_train.py patches the step with pytest's monkeypatch).

  DCGAN_JAX_POISON="STEP:LOSS" python tests/poisoned_step.py -m dcgan_jax.main <flags>

Step STEP (1-based, counted from the run's first step call) reports LOSS ('d_loss' or
'g_loss') as NaN. Only where the loop calls the step itself (steps_per_dispatch=1); every
process poisons the same step, as a real blow-up of the globally reduced loss would.
"""
import os
import runpy
import sys


def install(bad_step: int, name: str) -> None:
  """Makes the ``bad_step``-th call of ``DataParallelStep`` report loss ``name`` as NaN."""
  from dcgan_jax import parallel  # pylint: disable=g-import-not-at-top
  original, calls = parallel.DataParallelStep.__call__, [0]

  def poisoned(self, state, batch, rng):
    state, metrics = original(self, state, batch, rng)
    calls[0] += 1
    if calls[0] == bad_step:  # The same call on every process: the same global program.
      metrics = dict(metrics, **{name: metrics[name] * float('nan')})
    return state, metrics

  parallel.DataParallelStep.__call__ = poisoned


if __name__ == '__main__':
  step, loss = os.environ['DCGAN_JAX_POISON'].split(':')
  install(int(step), loss)
  assert sys.argv[1] == '-m', 'usage: poisoned_step.py -m MODULE [args]'
  target, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
  runpy.run_module(target, run_name='__main__', alter_sys=True)
