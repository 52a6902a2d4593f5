"""Build your own GAN on dcgan_jax: custom networks, the hinge loss, data-parallel steps.

  python experiments/custom_gan_example.py

Any flax modules work as long as the generator has a ``latent_dim`` attribute and maps
``[N, latent_dim]`` to images in [-1, 1] (``output_activation`` 'tanh', the default), the
discriminator maps images to logits ``[N]``, both take ``train=...``, and both have an
``axis_name`` attribute that their BatchNorms use (the step sets it to average batch statistics
over devices). Runs a few steps on random data, on every local device.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dcgan_jax


class TinyGenerator(nn.Module):
  latent_dim: int = 16
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z, train=True):  # [N, 16] -> [N, 8, 8, 1]
    x = nn.Dense(4 * 4 * 32)(z).reshape((-1, 4, 4, 32))
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
    x = nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding='SAME')(nn.relu(x))
    return jnp.tanh(x)


class TinyDiscriminator(nn.Module):
  axis_name: str | None = None

  @nn.compact
  def __call__(self, images, train=True):  # [N, 8, 8, 1] -> logits [N]
    x = nn.leaky_relu(nn.Conv(32, (4, 4), strides=(2, 2))(images), 0.2)
    return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]


def main(num_steps=3, batch_size=16):
  generator, discriminator = TinyGenerator(), TinyDiscriminator()
  state = dcgan_jax.create_gan_state(jax.random.key(0), generator, discriminator, use_ema=True)
  # One jitted step over all local devices (shard_map); the batch is split between them.
  step = dcgan_jax.DataParallelStep(generator, discriminator,
                                    dcgan_jax.StepConfig(loss='hinge', ema_decay=0.9))
  state = step.place_state(state)
  data = np.random.default_rng(0).integers(0, 256, (num_steps, batch_size, 8, 8, 1), np.uint8)
  for i in range(num_steps):  # Real images as uint8: the step scales them to [-1, 1].
    state, metrics = step(state, step.place_batch(data[i]), jax.random.key(i))
    print(f'step {i + 1}: ' + ', '.join(f'{k} {v:.3f}' for k, v in
                                        step.host_metrics(metrics).items()))
  state = step.host_state(state)
  z = jax.random.normal(jax.random.key(42), (4, generator.latent_dim))
  samples = generator.apply(state.sampling_variables(use_ema=True), z, train=False)
  print('samples', samples.shape)  # (4, 8, 8, 1)
  return state, samples


if __name__ == '__main__':
  main()
