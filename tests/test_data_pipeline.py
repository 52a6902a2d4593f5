"""create_train_iterator: named tfds datasets, seeded order, resuming, per-process sharding."""
import itertools
import logging
import pathlib
import sys
import warnings

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
from dcgan_jax.data import sources  # pylint: disable=g-import-not-at-top
from dcgan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = load_config(_ROOT / 'configs/default.py')
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def digits_config(tmp_path_factory):
  """Digits at 8x8 (no resize): cheap, and every pixel pattern can be compared exactly."""
  return _config(data_dir=str(tmp_path_factory.mktemp('tfds')), image_size=8, batch_size=64)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _sorted_rows(images):
  """The images as a sorted list of byte strings: compare multisets regardless of order."""
  return sorted(image.tobytes() for image in images)


@pytest.mark.parametrize('name,channels,native_shape', [
    ('mnist', 1, (28, 28, 1)), ('mnist', 3, (28, 28, 1)),
    ('cifar10', 3, (32, 32, 3)), ('cifar10', 1, (32, 32, 3)),
])
def test_named_tfds_datasets(tmp_path, name, channels, native_shape):
  config = _config(dataset=name, data_dir=str(tmp_path), image_size=16, channels=channels,
                   batch_size=8)
  with tfds.testing.mock_data(num_examples=20):
    source = sources.resolve_source(config)
    assert source.builder.info.features['image'].shape == native_shape
    batches = _take(input_pipeline.create_train_iterator(config, process_index=0,
                                                         process_count=1), 3)
  for batch in batches:
    assert batch.shape == (8, 16, 16, channels) and batch.dtype == np.uint8
  assert np.std(np.concatenate(batches)) > 10  # Random mock pixels survive the resize.
  if channels == 3 and native_shape[-1] == 1:
    np.testing.assert_array_equal(batches[0][..., 0], batches[0][..., 2])


@pytest.mark.skipif(sys.version_info < (3, 13), reason='autograph warns from Python 3.13 on')
def test_the_image_map_is_traced_as_written_not_rewritten_by_autograph(digits_config):
  """Our tf.data map function branches on Python values only; autograph's rewrite of it warned
  on Python 3.13 at every converted call (~500 per test file), and what the rewrite relies on
  goes in Python 3.15."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    batch = next(input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                      process_count=1))
  assert batch.shape == (64, 8, 8, 1) and batch.dtype == np.uint8
  rewritten = [str(w.message) for w in caught if '___pyct' in str(w.message)]
  assert not rewritten, (len(rewritten), rewritten[:2])


def test_seeded_order_is_deterministic(digits_config):
  def first_batches(seed):
    digits_config.seed = seed
    return _take(input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                      process_count=1), 4)

  first, again, other = first_batches(0), first_batches(0), first_batches(1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))
  digits_config.seed = 0


def test_each_epoch_is_a_shuffled_pass_over_all_examples(digits_config):
  all_images = input_pipeline.load_all_images(digits_config)
  digits_config.batch_size = 599  # 1797 = 3 * 599: an epoch is exactly 3 batches.
  try:
    iterator = input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                    process_count=1)
    epoch0, epoch1 = np.concatenate(_take(iterator, 3)), np.concatenate(_take(iterator, 3))
  finally:
    digits_config.batch_size = 64
  assert _sorted_rows(epoch0) == _sorted_rows(all_images)
  assert _sorted_rows(epoch1) == _sorted_rows(all_images)
  assert not np.array_equal(epoch0, all_images)  # Shuffled...
  assert not np.array_equal(epoch0, epoch1)  # ...differently each epoch.


def test_start_step_resumes_the_same_stream(digits_config):
  # 64-example batches straddle the 1797-example epoch boundary at step 28.
  straight = _take(input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                        process_count=1), 32)
  resumed = _take(input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                       process_count=1, start_step=27), 5)
  for expected, actual in zip(straight[27:], resumed):
    np.testing.assert_array_equal(expected, actual)


def test_processes_read_disjoint_halves(digits_config):
  all_images = input_pipeline.load_all_images(digits_config)
  digits_config.batch_size = 898  # 1797 // 2 = 898 per process: one local batch is one epoch.
  try:
    halves = [next(input_pipeline.create_train_iterator(digits_config, process_index=index,
                                                        process_count=2))
              for index in range(2)]
  finally:
    digits_config.batch_size = 64
  assert [h.shape for h in halves] == [(449, 8, 8, 1)] * 2
  # Take a full local epoch from each process to compare with the split's halves.
  digits_config.batch_size = 1796
  try:
    epochs = [next(input_pipeline.create_train_iterator(digits_config, process_index=index,
                                                        process_count=2))
              for index in range(2)]
  finally:
    digits_config.batch_size = 64
  assert _sorted_rows(epochs[0]) == _sorted_rows(all_images[:898])
  assert _sorted_rows(epochs[1]) == _sorted_rows(all_images[898:1796])
  np.testing.assert_array_equal(halves[0], epochs[0][:449])  # Same seed, same local stream.


def test_batch_not_divisible_by_process_count(digits_config):
  digits_config.batch_size = 63
  try:
    with pytest.raises(UserError, match='batch_size 63 must be a positive multiple of the '
                                        r'number of processes \(2\)'):
      input_pipeline.create_train_iterator(digits_config, process_index=0, process_count=2)
  finally:
    digits_config.batch_size = 64


@pytest.mark.parametrize('name', ['nosuchdataset', 'mnist!', ''])
def test_unknown_dataset_lists_the_known_ones(tmp_path, name):
  config = _config(dataset=name, data_dir=str(tmp_path))
  with pytest.raises(UserError) as caught:
    input_pipeline.dataset_info(config)
  message = str(caught.value)
  assert message.startswith(f'Unknown dataset {name!r}')
  for known in ('digits', 'folder', 'mnist', 'fashion_mnist', 'cifar10', 'celeb_a'):
    assert known in message
  assert '\n' not in message


def test_a_dataset_path_the_dataset_ignores_is_said_once_per_run(digits_config, tmp_path,
                                                                  caplog):
  """Forgetting dataset=folder trained on the digits without a word. A run resolves its source
  twice (dataset_info, then the images): said once. Each run of a sweep in one process says it
  (it was said once per process). The prepared digits are reused without tfds' 'Reusing
  dataset' line at each call (logged twice a run)."""
  config = _config(data_dir=digits_config.data_dir, image_size=8,
                   dataset_path=str(tmp_path / 'my_images'))
  with caplog.at_level(logging.INFO):
    for _ in range(2):  # Two runs.
      input_pipeline.dataset_info(config)
      input_pipeline.load_all_images(config, max_examples=4)
  said = [r.getMessage() for r in caplog.records if 'is ignored for dataset' in r.getMessage()]
  assert said == 2 * [f"dataset_path={str(tmp_path / 'my_images')!r} is ignored for dataset "
                      "'digits': it is read for 'folder', 'celeb_a' and 'array'; set "
                      "dataset='folder' to train on a folder of images."]
  assert 'Reusing dataset' not in caplog.text
  # An unknown name is its one-line error alone (the warning came first, naming it as read).
  caplog.clear()
  with caplog.at_level(logging.WARNING), pytest.raises(UserError, match='Unknown dataset'):
    input_pipeline.dataset_info(_config(dataset='Folder', data_dir=str(tmp_path),
                                        dataset_path=str(tmp_path)))
  assert 'is ignored' not in caplog.text


def test_dataset_without_images_is_rejected(tmp_path):
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(UserError, match="'imdb_reviews' has no image feature"):
      input_pipeline.dataset_info(_config(dataset='imdb_reviews', data_dir=str(tmp_path)))


def test_unknown_split_lists_the_splits(digits_config):
  digits_config.split = 'validation'
  try:
    with pytest.raises(UserError, match="Split 'validation' is not available.*its splits are "
                                        'train'):
      input_pipeline.dataset_info(digits_config)
  finally:
    digits_config.split = 'train'



@pytest.mark.parametrize('split,message', [
    ('train[:abc]', r"Split 'train\[:abc\]' of dataset 'digits' is not a valid tfds split "
                    r'\(Error parsing .*slices look like "train\[:90%\]"'),
    ('train[:200%]', r'not a valid tfds split .*percentages within 0..100'),
    ('train[:0]', r"Split 'train\[:0\]' of dataset 'digits' selects no examples \(train has "
                  r'1797\)'),
    ('train[:10]+train[5:2]', r"Split 'train\[5:2\]' of dataset 'digits' selects no examples"),
])
def test_bad_split_slices_are_one_clear_error(digits_config, split, message):
  """tfds alone: a traceback once reading starts, "Instruction [] corresponds to no data!", or a
  reversed slice counted as -3 examples."""
  digits_config.split = split
  try:
    with pytest.raises(UserError, match=message):
      input_pipeline.dataset_info(digits_config)
  finally:
    digits_config.split = 'train'


def test_split_slices_and_max_examples(digits_config):
  digits_config.split = 'train[1500:]'
  try:
    info = input_pipeline.dataset_info(digits_config)
    tail = input_pipeline.load_all_images(digits_config)
  finally:
    digits_config.split = 'train'
  assert info.num_examples == 297 == len(tail)
  head = input_pipeline.load_all_images(digits_config, max_examples=10)
  full = input_pipeline.load_all_images(digits_config)
  np.testing.assert_array_equal(head, full[:10])
  np.testing.assert_array_equal(tail, full[1500:])



def test_tfds_images_with_16_bits_or_alpha_become_what_the_folder_source_makes():
  """A tfds dataset of uint16 or RGBA images: scaled and composited on white, as the folder
  source's PIL path does (before: clipped to white, and the alpha channel dropped)."""
  import io  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import image_files  # pylint: disable=g-import-not-at-top

  def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return buffer.getvalue()

  grey16 = np.full((8, 8, 1), 32768, np.uint16)
  grey16[:4] = 200
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 255  # Red, fully transparent on top ...
  rgba[4:] = (0, 255, 0, 128)  # ... half-transparent green below.
  for image, encoded, channels in ((grey16, png(grey16[..., 0]), 1),
                                   (grey16, png(grey16[..., 0]), 3),
                                   (rgba, png(rgba), 3), (rgba, png(rgba), 1)):
    ours = input_pipeline._square_images(  # pylint: disable=protected-access
        tf.constant(image), 8, channels, 0).numpy()
    folder = image_files.square_image(encoded, 8, channels)
    assert ours.dtype == np.uint8 and ours.shape == (8, 8, channels)
    np.testing.assert_allclose(ours.astype(int), folder.astype(int), atol=1)
  assert ours.min() > 100  # Transparent red over white is white; the grey of half green, light.


def test_no_shuffle_buffer_keeps_stored_order(digits_config):
  digits_config.shuffle_buffer_size = 0
  try:
    stream = input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                  process_count=1)
    first = np.concatenate(list(itertools.islice(stream, 2)))
  finally:
    digits_config.shuffle_buffer_size = 10_000
  np.testing.assert_array_equal(first, input_pipeline.load_all_images(digits_config)[:128])
