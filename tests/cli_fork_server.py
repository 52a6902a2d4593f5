"""Runs CLI entry points in forked processes of one interpreter that has imported their libraries.

Started by tests/test_bad_inputs.py (``CliForkServer``) as ``python tests/cli_fork_server.py``.
Most bad-input rows end within a fraction of a second of ``main`` starting, but a fresh
``python -m dcgan_jax.main`` first spends ~2 s importing jax, flax, optax and orbax; over the
table's 30-odd rows that import was most of its time. This server imports those libraries once
(TensorFlow, tfds and TensorBoard unimportable: it imports tests/no_tensorflow_runner.py) and
then, for each request, forks: the child is a separate process with its own exit status, stdout
and stderr (redirected to files), working directory and environment, and runs the entry module
as ``python -m`` would (``runpy``, ``__main__``), atexit handlers included.

Forking is safe here because nothing in this process has started JAX's backends (no device, no
XLA thread pool: each child starts its own if it needs one); the only other thread is numpy's
OpenBLAS pool, which registers its own fork handlers.

Protocol: one JSON object per line on stdin, ``{"module", "argv", "env", "cwd", "stdout",
"stderr"}`` and optionally ``"timeout"`` (seconds, default 300: then the child is killed); one
line ``{"returncode": n}`` per request on stdout (negative: killed by that signal).
"""
import atexit
import importlib
import json
import os
import runpy
import signal
import sys
import time
import traceback

import no_tensorflow_runner  # pylint: disable=unused-import  # Importing it blocks TensorFlow.

# What the entry points import, up front (the entry modules themselves are not imported: they
# define absl flags, which a second definition as __main__ would clash with).
PRELOAD = ('numpy', 'jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint', 'absl.app',
           'absl.flags', 'absl.logging', 'ml_collections', 'ml_collections.config_flags',
           'dcgan_jax.errors', 'dcgan_jax.cli_logging', 'dcgan_jax.command_line',
           'dcgan_jax.config_files', 'dcgan_jax.models', 'dcgan_jax.train_step',
           'dcgan_jax.parallel', 'dcgan_jax.checkpointing', 'dcgan_jax.train')


def _child(request):
  """In the forked process: becomes `python -m module argv...` and never returns."""
  code = 1
  try:
    out = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # The child must not read the server's requests.
    os.close(null)
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    sys.argv = [request['module']] + request['argv']
    try:
      runpy.run_module(request['module'], run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as exit_:
      if exit_.code is None:
        code = 0
      elif isinstance(exit_.code, int):
        code = exit_.code
      else:  # sys.exit('message'), as the interpreter does it.
        print(exit_.code, file=sys.stderr)
        code = 1
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      code = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)  # pylint: disable=protected-access


def main():
  for name in PRELOAD:
    try:
      importlib.import_module(name)
    except ImportError:
      pass  # The child imports (or fails to import) it itself, as a fresh process would.
  print(json.dumps({'ready': True}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
      _child(request)
    deadline = time.monotonic() + request.get('timeout', 300)
    while True:  # A child that hangs is killed, so that the test fails instead of hanging.
      done, status = os.waitpid(pid, os.WNOHANG)
      if done:
        break
      if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
      time.sleep(0.005)
    print(json.dumps({'returncode': os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == '__main__':
  main()
