"""Worker for test_multiprocess_step: one process of a (possibly) multi-process GAN step.

Usage: python multiprocess_step_worker.py OUT.npz NUM_PROCESSES PROCESS_ID PORT
Each process owns its rows of one fixed global batch and runs two data-parallel steps; it also
gathers unevenly shared rows (``evaluation.allgather_rows``) and generates its share of images
from the trained state (``generation.LocalGenerator``, as in-training FID does).
"""
import os
import sys


def main():
  out, num_processes, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=120)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dcgan_jax import (DataParallelStep, Discriminator, Generator, StepConfig,  # pylint: disable=g-import-not-at-top
                         create_gan_state)
  assert jax.device_count() == 4, jax.devices()
  g = Generator(image_size=8, channels=1, latent_dim=8, width=8)
  d = Discriminator(image_size=8, channels=1, width=8)
  step = DataParallelStep(g, d, StepConfig(), parallelism=os.environ.get('PARALLELISM', 'shard_map'))
  state = step.place_state(create_gan_state(jax.random.key(0), g, d, use_ema=True))
  images = np.random.RandomState(0).randint(0, 256, (16, 8, 8, 1)).astype(np.uint8)
  rows = 16 // jax.process_count()
  local = images[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  for i in range(2):
    state, metrics = step(state, step.place_batch(local), jax.random.key(10 + i))
  host = step.host_state(state)
  leaves = jax.tree.leaves((host.generator.params, host.generator.batch_stats,
                            host.discriminator.params, host.discriminator.batch_stats, host.ema))
  metrics = step.host_metrics(metrics)
  # Rows shared unevenly (7 over 2 processes: 3 and 4), gathered back in order (the in-training
  # precision/recall gather their features this way).
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  all_rows = np.arange(14, dtype=np.float32).reshape(7, 2)
  gathered = evaluation.allgather_rows(all_rows[evaluation.process_share(7)], 7)
  # The in-training FID's generation: each process makes its share of 7 images on its own
  # devices alone, from its replicas of the trained (global) state.
  from dcgan_jax import generation  # pylint: disable=g-import-not-at-top
  local = generation.LocalGenerator(g)
  assert set(local.devices) == set(jax.local_devices())
  z = np.asarray(jax.random.normal(jax.random.key(5), (7, 8)))[evaluation.process_share(7)]
  chunks = local.dispatch(state.sampling_variables(), z, chunk_size=2)
  assert all(chunk.is_fully_addressable for chunk in chunks)
  mine = np.concatenate([np.asarray(chunk) for chunk in chunks]).reshape(len(z), -1)
  generated = evaluation.allgather_rows(mine, 7)
  np.savez(out, *[np.asarray(x) for x in leaves], gathered_rows=gathered, generated=generated,
           **{f'metric_{k}': v for k, v in metrics.items()})


if __name__ == '__main__':
  main()
