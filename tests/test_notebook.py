"""experiments/colab.ipynb runs end to end (short budget, CPU) and shows what it promises."""
import base64
import io
import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'experiments' / 'colab.ipynb'


def _outputs(cell, kind):
  return [o for o in cell.get('outputs', []) if o.get('output_type') == kind]


def _text(cell):
  return ''.join(o.get('text', '') for o in _outputs(cell, 'stream'))


def _images(cell, mime):
  return [base64.b64decode(o['data'][mime]) for o in
          _outputs(cell, 'display_data') if mime in o.get('data', {})]


def test_notebook_is_valid_nbformat_with_cell_ids():
  """Every cell has its own id (nbformat 4.5): newer nbformat versions reject a cell without."""
  import warnings  # pylint: disable=g-import-not-at-top
  raw = json.loads(NOTEBOOK.read_text())
  assert (raw['nbformat'], raw['nbformat_minor']) >= (4, 5)
  ids = [cell.get('id') for cell in raw['cells']]
  assert all(ids) and len(set(ids)) == len(ids), ids
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # nbformat warns (MissingIDFieldWarning) where it would fix.
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=4))


@pytest.mark.slow
def test_colab_notebook_executes(tmp_path, monkeypatch, seed_digits_classifier):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # Committed without outputs, so diffs stay readable and nothing stale is shown.
  assert all(not c.get('outputs') for c in notebook.cells if c.cell_type == 'code')
  workdir = tmp_path / 'run'
  monkeypatch.setenv('DCGAN_JAX_NOTEBOOK_QUICK', '1')
  monkeypatch.setenv('DCGAN_JAX_NOTEBOOK_WORKDIR', str(workdir))
  # No Inception weights there; the digits classifier is the one the test run trained once.
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  seed_digits_classifier(tmp_path / 'cache')
  # One CPU device, as a user's kernel has; compiled at conftest's LLVM level (same numbers,
  # measured: 79 s instead of 99 s for the notebook's cells).
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('DCGAN_JAX_TEST_XLA_FLAGS', ''))
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  # The kernel starts outside the repository: the setup cell finds it through the installed
  # package, without cloning anything.
  client.execute()

  code = [c for c in notebook.cells if c.cell_type == 'code']
  errors = [o for c in code for o in _outputs(c, 'error')]
  assert not errors, errors
  setup, train_cell = code[0], next(c for c in code if 'train_and_evaluate(config' in c.source)
  assert 'dcgan_jax 0.1.0 from ' + str(ROOT) in _text(setup)
  assert 'finished at step 300' in _text(train_cell)
  # The workdir holds what the notebook showed.
  assert (workdir / 'samples' / 'progress.gif').is_file()
  report = json.loads((workdir / 'quality.json').read_text())
  assert report['step'] == 300 and report['frechet_distance_ratio'] < 1.0

  # Inline pictures: sample grid (PNG) and the progress GIF; the walk PNG and its GIF.
  samples_cell = next(c for c in code if "progress.gif" in c.source)
  pngs, gifs = _images(samples_cell, 'image/png'), _images(samples_cell, 'image/gif')
  assert len(pngs) == 1 and len(gifs) == 1
  grids = sorted(p.name for p in (workdir / 'samples').glob('step_*.png'))
  assert grids == ['step_000100.png', 'step_000200.png', 'step_000300.png']
  with Image.open(io.BytesIO(gifs[0])) as gif:
    assert gif.n_frames == len(grids)
  walk_cell = next(c for c in code if 'sample.interpolation' in c.source)
  assert '14 frames' in _text(walk_cell)  # 8 steps there and 6 back.
  # Plots (matplotlib PNGs): losses, class histogram, custom GAN samples, augmented views.
  for marker in ('read_scalars', 'class_fractions', 'register_loss', "'bgcfnc'"):
    cell = next(c for c in code if marker in c.source)
    assert _images(cell, 'image/png'), f'no plot from the cell using {marker}'
  # The profile of 20 training steps, read back with its operations named by layer.
  profile_text = _text(next(c for c in code if 'profiling.summarise_trace' in c.source))
  assert '20 steps on' in profile_text and 'kernels/step' in profile_text
  assert 'Discriminator' in profile_text or 'Generator' in profile_text
  fid_cell = next(c for c in code if 'DOWNLOAD_WEIGHTS = False' in c.source)
  assert 'No FID weights' in _text(fid_cell)  # No download in tests.
  custom = next(c for c in code if 'register_loss' in c.source)
  assert "'d_loss'" in _text(custom) and "'g_loss'" in _text(custom)
  # The conditional run draws the digits it is asked for well above chance (0.1) already.
  conditional = next(c for c in code if 'num_classes=10' in c.source)
  assert 'label accuracy' in _text(conditional)
  cond_report = json.loads((tmp_path / 'run_conditional' / 'quality.json').read_text())
  assert cond_report['step'] == 400 and cond_report['label_accuracy'] > 0.5
  assert len(_images(conditional, 'image/png')) == 2  # The run's grid and the label=7 grid.
