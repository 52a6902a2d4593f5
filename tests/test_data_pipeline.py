"""create_train_iterator: named tfds datasets, seeded order, resuming, per-process sharding."""
import itertools
import pathlib

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


def test_no_shuffle_buffer_keeps_stored_order(digits_config):
  digits_config.shuffle_buffer_size = 0
  try:
    stream = input_pipeline.create_train_iterator(digits_config, process_index=0,
                                                  process_count=1)
    first = np.concatenate(list(itertools.islice(stream, 2)))
  finally:
    digits_config.shuffle_buffer_size = 10_000
  np.testing.assert_array_equal(first, input_pipeline.load_all_images(digits_config)[:128])
