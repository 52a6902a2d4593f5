"""tf.data input pipelines: uint8 image batches for training, and whole datasets for evaluation.

Every source (:mod:`dcgan_jax.data.sources`) but ``array`` is read through tfds (an ``array``
file is read with numpy alone, for the device-resident path), then each image is squared
(centre crop of side ``crop_size`` or the largest square, antialiased bilinear resize to
``image_size``) and converted to ``channels`` (grey replicated, RGB to luma with ITU-R 601-2
weights like PIL). Batches stay ``uint8``: scaling to [-1, 1] happens on the device, in the train
step, so the host sends a quarter of the bytes.

Training order: the stream of examples is the concatenation of epochs; epoch ``e`` is the process's
examples shuffled with a seed derived from ``(config.seed, e)`` (a buffer of
``config.shuffle_buffer_size``; the whole epoch when the buffer is at least that large).
Batches may straddle epochs; nothing is dropped. Because each epoch's order depends only on
``(seed, e)``, the stream can be restarted at any step (``start_step``) without replaying the
previous epochs, so a resumed run sees exactly the batches an uninterrupted run would have.

Multi-process: the split is cut into ``process_count`` equal, disjoint parts with
``tfds.even_splits`` (a few leftover examples are dropped); each process reads its part only and
yields ``batch_size // process_count`` examples per step. Processes must agree on the config.

TensorFlow is kept off accelerators (:func:`hide_accelerators_from_tensorflow`) so that JAX owns
all device memory.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from dcgan_jax import class_names as class_names_lib
from dcgan_jax.data import array
from dcgan_jax.data import sources
from dcgan_jax.errors import UserError
from dcgan_jax.tensorflow_devices import hide_accelerators_from_tensorflow

# Prepared images up to this size are cached in host memory after preprocessing.
_CACHE_MAX_BYTES = 1 << 30
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert('L').
# Multiplied into the run seed so that neighbouring seeds do not give overlapping epoch seeds.
_EPOCH_SEED_STRIDE = 1_000_003


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about the configured dataset.

  Attributes:
    name: readable source name (``'digits'``, ``'mnist'``, ``'folder:/path'``, ...).
    split: the tfds split read.
    num_examples: examples in that split (over all processes).
    image_shape: ``(image_size, image_size, channels)`` of the batches.
    num_classes: classes of the dataset's labels (tfds' ``label`` feature, or one more than
      the largest of an array's labels); 0 when it has none.
    class_names: the classes' names in label order where the dataset has them (a folder's
      class folders, tfds' label names), else empty.
  """
  name: str
  split: str
  num_examples: int
  image_shape: tuple[int, int, int]
  num_classes: int = 0
  class_names: tuple[str, ...] = ()

  def describe_classes(self, limit: int = 20) -> str:
    """``', 3 classes (0 cat, 1 dog, 2 zebra)'`` for the dataset line of the log; names that
    only repeat their index are left out, and beyond ``limit`` classes the names are cut."""
    if not self.num_classes:
      return ''
    text = f', {self.num_classes} classes'
    if class_names_lib.has_names(self.class_names):
      shown = ', '.join(f'{i} {n}' for i, n in enumerate(self.class_names[:limit]))
      text += f' ({shown}{", ..." if len(self.class_names) > limit else ""})'
    return text

  @property
  def num_bytes(self) -> int:
    """Size of the whole split as uint8 images (what device-resident mode would hold)."""
    return self.num_examples * int(np.prod(self.image_shape))


def _is_array(config) -> bool:
  return str(config.dataset).strip() == array.NAME


def _load_array(config) -> tuple[np.ndarray, np.ndarray | None]:
  if int(config.get('crop_size', 0)):
    raise UserError("crop_size applies only to datasets read through tensorflow-datasets; for "
                    "dataset 'array' crop the images beforehand and set crop_size to 0.")
  split = str(config.get('split', 'train') or 'train').strip()
  if split != 'train':
    raise UserError(f"dataset 'array' has no splits: it trains on the whole file (split "
                    f"'train'), not {split!r}; slice the array before saving it, or leave split "
                    "at 'train'.")
  return array.load_array(str(config.get('dataset_path', '')), int(config.image_size),
                          int(config.channels))


def conditional(config) -> bool:
  """Whether the config trains class-conditional models (``num_classes > 0``)."""
  return int(config.get('num_classes', 0) or 0) > 0


def check_num_classes(config, info: DatasetInfo) -> None:
  """Raises a UserError unless ``config.num_classes`` fits the dataset's labels.

  Unconditional training (0) fits every dataset; conditional training needs labels, and as
  many classes as the dataset has.
  """
  wanted = int(config.get('num_classes', 0) or 0)
  if _is_array(config) and wanted and info.num_classes:
    if info.num_classes > wanted:
      raise UserError(f'num_classes is {wanted} but the labels of {info.name!r} go up to '
                      f'{info.num_classes - 1}; set num_classes to at least {info.num_classes}.')
    return
  sources.check_num_classes(wanted, info.name, info.num_classes)


def _square_images(image, image_size: int, channels: int, crop_size: int):
  """Centre-crops, resizes and converts one image (a TF graph function).

  As the folder source (:mod:`dcgan_jax.data.image_files`) does with PIL: 16-bit images are
  scaled to 8 bits (not clipped, which would turn them white) and transparency is composited
  onto white.

  Args:
    image: ``uint8`` or ``uint16 [height, width, channels_in]`` with channels_in in 1, 3, 4.
    image_size: output side.
    channels: output channels, 1 or 3.
    crop_size: side of the centred square to cut out; 0 for the largest.

  Returns:
    ``uint8 [image_size, image_size, channels]``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  channels_in = image.shape[-1]
  static_height, static_width = image.shape[0], image.shape[1]
  already_square = (static_height == image_size and static_width == image_size
                    and (crop_size == 0 or crop_size >= image_size))
  if already_square and channels_in == channels and image.dtype == tf.uint8:
    return tf.ensure_shape(image, (image_size, image_size, channels))
  pixels = tf.cast(image, tf.float32)
  if image.dtype == tf.uint16:
    pixels = pixels * (255.0 / 65535.0)
  if channels_in == 4:  # Over white, as a viewer shows it (transparent pixels' colours vary).
    alpha = pixels[..., 3:] / 255.0
    pixels = pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)
    channels_in = 3
  if not already_square:
    height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
    side = tf.minimum(height, width)
    if crop_size > 0:
      side = tf.minimum(side, crop_size)
    pixels = tf.image.crop_to_bounding_box(pixels, (height - side) // 2, (width - side) // 2,
                                           side, side)
    pixels = tf.image.resize(pixels, (image_size, image_size), method='bilinear', antialias=True)
  if channels_in == 3 and channels == 1:
    pixels = tf.reduce_sum(pixels * tf.constant(_LUMA_WEIGHTS), axis=-1, keepdims=True)
  elif channels_in == 1 and channels == 3:
    pixels = tf.tile(pixels, (1, 1, 3))
  image = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(image, (image_size, image_size, channels))


def _image_dataset(source: sources.Source, split: str, config, with_labels: bool = False):
  """The examples of ``split`` as a tf.data.Dataset of squared uint8 images, in stored order
  (``(image, int32 label)`` pairs with ``with_labels``)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # The order must not depend on tfds' file shuffling; we shuffle (seeded) ourselves.
  read_config = tfds.ReadConfig(try_autocache=False, add_tfds_id=False)
  dataset = source.builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
  image_size, channels = int(config.image_size), int(config.channels)
  if with_labels and not source.label_key:
    raise UserError(f'Dataset {source.name!r} has no class labels; set num_classes to 0.')
  dtype = np.dtype(source.builder.info.features[source.image_key].np_dtype)
  if dtype not in (np.uint8, np.uint16):
    raise UserError(f'The images of dataset {source.name!r} are {dtype}; dcgan_jax reads uint8 '
                    'or uint16 images (tfds.features.Image with dtype uint8 or uint16).')

  def prepare(example):
    image = _square_images(example[source.image_key], image_size, channels, source.crop_size)
    if with_labels:
      return image, tf.cast(example[source.label_key], tf.int32)
    return image

  # Traced as written: its branches are on Python values (shapes, dtypes, the config), so
  # autograph's rewrite adds nothing but the rewrite's cost and, on Python 3.13, a deprecation
  # warning per converted call (what autograph relies on goes in Python 3.15).
  return dataset.map(tf.autograph.experimental.do_not_convert(prepare),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _num_examples(dataset, source: sources.Source, split: str) -> int:
  """Examples in a split: tf.data's cardinality (tfds sets it), else tfds' split info."""
  cardinality = int(dataset.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(source.builder.info.splits[split].num_examples)


def _process_split(split: str, process_index: int, process_count: int):
  """This process's disjoint part of ``split``."""
  if process_count == 1:
    return split
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """Fills in JAX's process index and count where not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
  return process_index, process_count


def dataset_info(config) -> DatasetInfo:
  """Prepares the dataset if needed and describes it.

  Args:
    config: the run config (see :func:`create_train_iterator` for the fields read).

  Returns:
    The :class:`DatasetInfo` of the configured split.

  Raises:
    UserError: see :func:`dcgan_jax.data.sources.resolve_source`.
  """
  shape = (int(config.image_size), int(config.image_size), int(config.channels))
  if _is_array(config):  # numpy only: no TensorFlow.
    images, labels = _load_array(config)
    num_classes = int(labels.max()) + 1 if labels is not None and labels.size else 0
    return DatasetInfo(f'array:{config.dataset_path}', config.get('split', 'train') or 'train',
                       len(images), shape, num_classes)
  # Paths are checked before TensorFlow loads (seconds), so a mistyped one is reported at once.
  sources.check_dataset_path(config)
  hide_accelerators_from_tensorflow()
  source = sources.resolve_source(config)
  sources.warn_if_path_ignored(config, source)  # Here: once per run (sources resolve twice).
  dataset = _image_dataset(source, source.split, config)
  return DatasetInfo(source.name, source.split, _num_examples(dataset, source, source.split),
                     shape, source.num_classes, source.class_names)


def create_train_iterator(
    config,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
    with_labels: bool | None = None,
) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
  """An endless iterator of this process's share of each global training batch.

  Args:
    config: reads ``dataset``, ``data_dir``, ``dataset_path``, ``split``, ``image_size``,
      ``channels``, ``crop_size``, ``batch_size`` (global), ``seed`` and
      ``shuffle_buffer_size``.
    process_index: this process; defaults to ``jax.process_index()``.
    process_count: number of processes; defaults to ``jax.process_count()``.
    start_step: the first step's index; the iterator yields the batches of steps
      ``start_step, start_step + 1, ...`` (for resuming).
    with_labels: yield ``(images, labels)``; by default when ``config.num_classes > 0``.

  Returns:
    A Python iterator of ``uint8 [batch_size // process_count, image_size, image_size,
    channels]`` numpy arrays (values 0..255, not scaled), or of ``(images, int32 labels)``.

  Raises:
    UserError: bad dataset settings, or ``batch_size`` not divisible by the process count.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if _is_array(config):
    raise UserError("dataset 'array' is read on the devices only; set device_resident to 'auto' "
                    "or 'always' (and make the array fit in device memory).")
  hide_accelerators_from_tensorflow()
  process_index, process_count = _process_layout(process_index, process_count)
  batch_size = int(config.batch_size)
  if batch_size <= 0 or batch_size % process_count:
    raise UserError(f'batch_size {batch_size} must be a positive multiple of the number of '
                    f'processes ({process_count}).')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  local_batch = batch_size // process_count

  source = sources.resolve_source(config)
  split = _process_split(source.split, process_index, process_count)
  with_labels = conditional(config) if with_labels is None else with_labels
  dataset = _image_dataset(source, split, config, with_labels)
  num_examples = _num_examples(dataset, source, split)
  if num_examples == 0:
    raise UserError(f'Split {source.split!r} of dataset {source.name!r} has no examples for '
                    f'process {process_index} of {process_count}; use a larger split.')
  if num_examples * int(config.image_size) ** 2 * int(config.channels) <= _CACHE_MAX_BYTES:
    dataset = dataset.cache()  # Shared by all epochs: decode and resize once.

  buffer_size = min(int(config.get('shuffle_buffer_size', 10_000)), num_examples)
  seed = int(config.get('seed', 0))

  def one_epoch(epoch):
    if buffer_size <= 1:
      return dataset
    epoch_seed = tf.constant(seed * _EPOCH_SEED_STRIDE % 2**62, tf.int64) + epoch
    return dataset.shuffle(buffer_size, seed=epoch_seed, reshuffle_each_iteration=False)

  first_epoch, offset = divmod(start_step * local_batch, num_examples)
  stream = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(
      tf.autograph.experimental.do_not_convert(one_epoch))  # As _image_dataset's map.
  stream = stream.skip(offset).batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  stream = stream.with_options(options).prefetch(tf.data.AUTOTUNE)
  return iter(stream.as_numpy_iterator())


def load_all_images(config, *, split: str | None = None, max_examples: int | None = None,
                    with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Every image of the configured split, preprocessed as for training, in stored order.

  Used for the device-resident mode and for reference statistics (FID). Not sharded: every
  process gets the whole split.

  Args:
    config: as for :func:`create_train_iterator` (batch and shuffle fields unused).
    split: overrides ``config.split`` (e.g. ``'test'`` for reference statistics).
    max_examples: keep only the first this many.
    with_labels: also return the examples' classes.

  Returns:
    ``uint8 [num_examples, image_size, image_size, channels]``, or with ``with_labels`` the
    pair ``(images, int32 labels [num_examples])``.

  Raises:
    UserError: see :func:`dcgan_jax.data.sources.resolve_source`.
  """
  if _is_array(config):  # numpy only: no TensorFlow.
    images, labels = _load_array(config)
    images = np.array(images[:max_examples])  # A copy in memory, not the memory map.
    if not with_labels:
      return images
    if labels is None:
      raise UserError(f'{config.dataset_path!r} has no {array.LABELS_KEY!r}; set num_classes '
                      'to 0 or add the labels.')
    return images, np.asarray(labels[:max_examples], np.int32)
  hide_accelerators_from_tensorflow()
  source = sources.resolve_source(config, split=split)
  dataset = _image_dataset(source, source.split, config, with_labels)
  num_examples = _num_examples(dataset, source, source.split)
  if max_examples is not None:
    num_examples = min(num_examples, max_examples)
    dataset = dataset.take(num_examples)
  shape = (int(config.image_size), int(config.image_size), int(config.channels))
  images = np.empty((num_examples, *shape), np.uint8)  # Filled in place: no second copy.
  labels = np.empty((num_examples,), np.int32)
  filled = 0
  for batch in dataset.batch(1024).as_numpy_iterator():
    batch_images = batch[0] if with_labels else batch
    images[filled:filled + len(batch_images)] = batch_images
    if with_labels:
      labels[filled:filled + len(batch_images)] = batch[1]
    filled += len(batch_images)
  return (images[:filled], labels[:filled]) if with_labels else images[:filled]

