"""Class names: saved by a conditional run on a named dataset, taken by --label as names."""
import json
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from dcgan_jax import class_names
from dcgan_jax import run_checks
from dcgan_jax import sample
from dcgan_jax import train
from dcgan_jax.errors import UserError

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_labels_parse_as_numbers_or_the_runs_names(tmp_path):
  assert class_names.load(tmp_path) == ()
  assert class_names.parse_label('', tmp_path) is None
  assert class_names.parse_label(None, tmp_path) is None
  assert class_names.parse_label(' 3 ', tmp_path) == 3  # Range is checked against the run.
  with pytest.raises(UserError, match=r'--label=cat: this run saved no class names .*pass a '
                     'class number'):
    class_names.parse_label('cat', tmp_path)
  class_names.save(tmp_path, ['bird', 'Cat', '7', 'dog'])
  assert json.loads((tmp_path / 'classes.json').read_text()) == {
      'class_names': ['bird', 'Cat', '7', 'dog']}
  assert class_names.load(tmp_path) == ('bird', 'Cat', '7', 'dog')
  assert class_names.parse_label('dog', tmp_path) == 3
  assert class_names.parse_label('cat', tmp_path) == 1  # One name fits whatever the case.
  assert class_names.parse_label('7', tmp_path) == 2  # A class named 7 wins over the number.
  assert class_names.parse_label('3', tmp_path) == 3  # Otherwise a number is a number.
  with pytest.raises(UserError, match=r"--label=zebra is not a class of this run; pass a "
                     r"number or a name \(0 bird, 1 Cat, 2 7, 3 dog\)\."):
    class_names.parse_label('zebra', tmp_path)


def test_a_damaged_classes_file_means_no_names(tmp_path):
  for text in ('{not json', '{"class_names": "cat"}', '{"class_names": [1, 2]}', '[]'):
    (tmp_path / 'classes.json').write_text(text)
    assert class_names.load(tmp_path) == ()
    assert class_names.parse_label('2', tmp_path) == 2
    # A name cannot be looked up; the error says the file is damaged, not missing.
    with pytest.raises(UserError, match=r'--label=cat: .*classes\.json is unreadable \(not a '
                       r'JSON object with a "class_names" list of strings\).*pass a class '
                       'number'):
      class_names.parse_label('cat', tmp_path)


def test_names_that_repeat_the_numbers_say_nothing():
  assert not class_names.has_names(['0', '1', '2'])
  assert not class_names.has_names([])
  assert class_names.has_names(['0', 'one'])


def _class_folders(root: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  for name in ('dog', 'cat'):  # Labels follow the sorted names: cat 0, dog 1.
    (root / name).mkdir(parents=True)
    for i in range(4):
      Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8), 'L').save(root / name / f'{i}.png')


def test_a_run_on_class_folders_saves_their_names_for_sample(tmp_path, capsys, caplog,
                                                             monkeypatch):
  _class_folders(tmp_path / 'images')
  config = train.load_config(_ROOT / 'configs' / 'default.py')
  monkeypatch.chdir(tmp_path)
  config.update(dict(
      dataset='folder', dataset_path='images', data_dir='tfds', quality_cache_dir='cache',
      image_size=8, channels=1, num_classes=2, generator_width=8, discriminator_width=8,
      latent_dim=8, batch_size=8, num_train_steps=1, log_every_steps=1,
      checkpoint_every_steps=0, sample_every_steps=0, quality_every_steps=0,
      num_sample_images=4, lr_schedule='constant'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, workdir)
  assert class_names.load(workdir) == ('cat', 'dog')
  # Relative paths are saved absolute: probe, evaluate and a resume read them from anywhere.
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset_path'] == str(tmp_path / 'images')
  assert saved['data_dir'] == str(tmp_path / 'tfds') and (tmp_path / 'tfds').is_dir()
  assert saved['quality_cache_dir'] == str(tmp_path / 'cache')
  # The parameter statistics go to a file, not the console.
  overview = (workdir / 'parameters.txt').read_text()
  assert overview.startswith('Generator\n') and '\nDiscriminator\n' in overview
  assert 'project/kernel' in overview and 'Std' in overview

  by_number, by_name = tmp_path / 'one.png', tmp_path / 'dog.png'
  sample.main(['sample', f'--workdir={workdir}', '--num=4', '--label=1', f'--out={by_number}'])
  with caplog.at_level(logging.INFO):
    sample.main(['sample', f'--workdir={workdir}', '--num=4', '--label=DOG', f'--out={by_name}'])
  np.testing.assert_array_equal(np.asarray(Image.open(by_name)), np.asarray(Image.open(by_number)))
  # It says which checkpoint and which weights it drew from.
  assert f'Sampling the checkpoint of step 1 in {workdir} (EMA weights).' in caplog.text
  with pytest.raises(SystemExit) as exit_info:
    sample.main(['sample', f'--workdir={workdir}', '--label=zebra', f'--out={tmp_path}/z.png'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().endswith(
      '--label=zebra is not a class of this run; pass a number or a name (0 cat, 1 dog).')
  assert not (tmp_path / 'z.png').exists()


def test_renamed_class_folders_are_warned_about_on_resume(caplog):
  with caplog.at_level(logging.WARNING):
    assert not run_checks.warn_about_changed_class_names((), ('ant', 'cat'))  # A new workdir.
    assert not run_checks.warn_about_changed_class_names(('cat', 'dog'), ('cat', 'dog'))
    assert run_checks.warn_about_changed_class_names(('cat', 'dog', 'zebra fish'),
                                                ('ant', 'cat', 'dog'))
  assert ("The classes are not those this workdir was trained on (0 'cat' -> 'ant', "
          "1 'dog' -> 'cat', 2 'zebra fish' -> 'dog'): label k now means another class") \
      in caplog.text
