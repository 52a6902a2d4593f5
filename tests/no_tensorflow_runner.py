"""Runs a module or script with TensorFlow, tfds and TensorBoard made unimportable.

  python tests/no_tensorflow_runner.py -m dcgan_jax.main --config=... --workdir=...
  python tests/no_tensorflow_runner.py experiments/benchmark_loop.py --tiny ...

Stands for the JAX-only environment of a GPU container (no TensorFlow): used by
tests/test_no_tensorflow.py, tests/test_benchmarks.py, tests/test_kill_resume.py (one chain);
tests/cli_fork_server.py imports it for tests/test_bad_inputs.py.
"""
import runpy
import sys

for _name in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):
  sys.modules[_name] = None  # `import tensorflow` now raises ImportError.

if __name__ == '__main__':
  if sys.argv[1] == '-m':
    target, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
    runpy.run_module(target, run_name='__main__', alter_sys=True)
  else:
    target, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(target, run_name='__main__')
