"""The README's "Build your own GAN" snippet runs as written."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_build_your_own_gan_snippet_runs(capsys):
  text = README.read_text()
  section = text[text.index('## Build your own GAN'):]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['samples'].shape == (4, 8, 8, 1)
  assert np.all(np.isfinite(namespace['samples']))
  assert 'd_loss' in capsys.readouterr().out
