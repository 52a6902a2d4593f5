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
  from dcgan_jax.evaluation import manifold  # pylint: disable=g-import-not-at-top
  tags = readme_scalar_tags()
  assert {'d_loss', 'eval/fid', 'quality/frechet_distance_ratio', 'r1_penalty'} <= tags
  package = README.parent / 'dcgan_jax'

  def source(*names):
    return '\n'.join((package / name).read_text() for name in names)

  # Where each kind of tag is made: the step's and the loop's metrics (as keys or keywords), the
  # quality hook's scores (quality.py's keys, the manifold metrics), the FID hook's.
  loop = source('train.py', 'train_step.py')
  quality = source('train_hooks.py', 'quality.py')
  for tag in tags:
    kind, _, name = tag.rpartition('/')
    if kind == 'quality':
      assert f"'{tag}'" in quality or (f"'{name}'" in quality
                                       or name in manifold.METRICS), tag
    elif kind == 'eval':
      assert f"'{tag}'" in source('train_hooks.py') or name in manifold.METRICS, tag
    else:
      assert not kind and re.search(rf"'{name}'|\b{name}=", loop), tag
