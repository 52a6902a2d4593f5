"""Ctrl-C in the tools that read a run (fid, evaluate, sample, probe): one line, exit 130.

Each program runs in a process of its own with the function doing its work replaced by one that
raises KeyboardInterrupt, as a Ctrl-C inside JAX does. (The training program's Ctrl-C handling,
which saves first, is pinned down in tests/test_preemption.py.)
"""
import pathlib
import subprocess
import sys
import textwrap

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# (module, the function whose call is interrupted, argv)
CASES = [
    ('dcgan_jax.fid', 'main', ['fid', 'a', 'b']),
    ('dcgan_jax.evaluate', 'main', ['evaluate', '--workdir=run']),
    ('dcgan_jax.sample', 'sample_grid_png', ['sample', '--workdir=run', '--out={tmp}/grid.png']),
    ('dcgan_jax.probe', 'probe', ['probe', '--workdir=run']),
]


@pytest.mark.parametrize('module,function,argv', CASES, ids=[c[0] for c in CASES])
def test_ctrl_c_is_one_line_and_exit_130(module, function, argv, tmp_path):
  script = textwrap.dedent(f"""
      import importlib, sys
      program = importlib.import_module({module!r})

      def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

      setattr(program, {function!r}, interrupted)
      argv = {[a.format(tmp=tmp_path) for a in argv]!r}
      if hasattr(program, 'run'):
        sys.argv = argv
        program.run()
      else:
        program.main(argv)
      print('not reached')
      """)
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 130, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith('Interrupted.'), lines
  assert 'not reached' not in result.stdout
  assert not list(tmp_path.iterdir())  # Nothing written (sample's grid least of all).
