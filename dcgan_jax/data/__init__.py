"""Input data for dcgan_jax: tfds sources, tf.data pipelines and device-resident sampling.

Importing this package is cheap: TensorFlow, tfds and JAX load only when a function needs them.

* :func:`create_train_iterator`, :func:`dataset_info`, :func:`load_all_images`,
  :class:`DatasetInfo` (:mod:`.input_pipeline`);
* :class:`DeviceResidentSampler`, :func:`use_device_resident`, :func:`choose_device_resident`
  (:mod:`.device_resident`);
* sources: :mod:`.digits`, :mod:`.folder`, :mod:`.celeba`, :mod:`.sources`.
"""
import importlib

_EXPORTS = {
    'create_train_iterator': 'input_pipeline',
    'dataset_info': 'input_pipeline',
    'load_all_images': 'input_pipeline',
    'check_num_classes': 'input_pipeline',
    'conditional': 'input_pipeline',
    'DatasetInfo': 'input_pipeline',
    'DeviceResidentSampler': 'device_resident',
    'use_device_resident': 'device_resident',
    'choose_device_resident': 'device_resident',
    'known_dataset_names': 'sources',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module = importlib.import_module(f'{__name__}.{_EXPORTS[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
