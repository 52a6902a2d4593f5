"""The training hooks' image generation (:class:`dcgan_jax.train_hooks.Sampler`)."""
import jax
import numpy as np
import pytest

from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import train
from dcgan_jax import train_hooks
from tiny_configs import tiny_config


@pytest.mark.parametrize('parallelism', ['shard_map', 'pmap'])
def test_sampler_reads_a_fresh_state_and_a_placed_one(tmp_path, parallelism):
  """The untrained generator's digits quality reads the fresh state, not yet laid out for the
  step: under pmap its first row was taken for a replica (every digits run with quality
  scoring failed at its start)."""
  config = tiny_config(tmp_path, parallelism=parallelism)
  generator = models.generator_from_config(config)
  step_fn = parallel.DataParallelStep(generator, models.discriminator_from_config(config),
                                      parallelism=parallelism)
  fresh = train.create_train_state(config, jax.random.key(0), 4)
  sampler = train_hooks.Sampler(config, step_fn)
  z = train_hooks.latents(0, train_hooks.SAMPLE_TAG, 5, int(config.latent_dim))
  expected = np.asarray(generator.apply(fresh.sampling_variables(), z, train=False))
  for state in (fresh, step_fn.place_state(fresh)):
    np.testing.assert_allclose(sampler.generate(sampler.variables(state), z), expected,
                               rtol=1e-6, atol=1e-6)
