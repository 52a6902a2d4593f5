"""The README's "Build your own GAN" snippet runs as written; its scalar table is current."""
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


def readme_scalar_tags() -> set[str]:
  """The tags README's "Logged scalars" table names."""
  text = README.read_text()
  table = text.split('### Logged scalars', 1)[1].split('\n### ', 1)[0]
  rows = [line for line in table.splitlines() if line.startswith('| `')]
  return {tag for row in rows for tag in re.findall(r'`([a-z0-9_/]+)`', row.split('|')[1])}


def test_scalar_table_names_only_tags_the_library_writes():
  """A renamed or removed tag must leave the table (tests/test_no_tensorflow.py checks the other
  way: every tag a run logs is in it)."""
  tags = readme_scalar_tags()
  assert {'d_loss', 'eval/fid', 'quality/frechet_distance_ratio', 'r1_penalty'} <= tags
  source = '\n'.join(path.read_text() for path in (README.parent / 'dcgan_jax').rglob('*.py'))
  for tag in tags:
    # Written as a key ('d_loss') or a keyword (d_grad_norm=...); quality/ and eval/ tags are
    # built from the score's name ('quality/{name}').
    name = tag.split('/')[-1]
    assert re.search(rf"'{name}'|\b{name}=", source), tag
