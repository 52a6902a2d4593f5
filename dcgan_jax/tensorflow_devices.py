"""Keeps TensorFlow (tf.data input pipelines, TensorBoard writers) off the accelerators.

TensorFlow claims most of every visible GPU's memory when its runtime starts, which would leave
too little for JAX. Hiding the GPUs and TPUs from it must happen before its runtime initialises,
so every place that is about to use TensorFlow first calls :func:`hide_accelerators_from_tensorflow`
(it is idempotent and cheap once TensorFlow is imported). Nothing here runs at import time: code
paths that never touch TensorFlow (config checks, the ``array`` dataset's early errors) do not pay
the seconds that importing it takes.
"""
from __future__ import annotations

from absl import logging


def hide_accelerators_from_tensorflow() -> None:
  """Makes TensorFlow use only the CPU, leaving GPU/TPU memory to JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  for device_type in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      # ValueError: no such device type in this TF build. RuntimeError: TF initialised its
      # devices already; harmless unless it can still see an accelerator (checked below).
      pass
  if tf.config.get_visible_devices('GPU'):
    logging.warning('TensorFlow initialised before its GPUs could be hidden and may hold GPU '
                    'memory; call hide_accelerators_from_tensorflow() before any TF use.')
