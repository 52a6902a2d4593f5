r"""A Keras-``summary()``-like table of the generator and discriminator of a config.

  python -m dcgan_jax.summary --config=configs/default.py [--config.image_size=64]
  python -m dcgan_jax.summary --workdir=<a training run>   # the models it was trained with

For every layer (flax submodule) it lists the output shape and the number of parameters, then
the totals, plus the shape arithmetic that answers the usual DCGAN question: how many
(transposed) convolutions does a given image size need? Shapes come from ``jax.eval_shape``, so
nothing is compiled or run: the summary of a 256x256 model costs well under a second.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dcgan_jax import models
from dcgan_jax import state as state_lib


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One row of the table.

  Attributes:
    name: The submodule's name ('project', 'ConvTranspose_0', ...), or 'output' for the model's
      final (activated) output.
    kind: Its class name ('Dense', 'BatchNorm', ...).
    output_shape: Output shape, batch dimension included (``(N, H, W, C)``).
    num_params: Number of trainable parameters (BatchNorm running statistics excluded).
  """

  name: str
  kind: str
  output_shape: tuple[int, ...]
  num_params: int


def layer_rows(module: nn.Module, example_input: jax.ShapeDtypeStruct) -> list[LayerRow]:
  """The layers of ``module`` in call order, with output shapes and parameter counts.

  Args:
    module: A flax module called as ``module(x, train=True)``.
    example_input: The abstract input, e.g. ``ShapeDtypeStruct((1, 100), float32)``.

  Returns:
    One :class:`LayerRow` per direct submodule call, then one 'output' row for the model output.
  """

  kinds: dict[str, str] = {}  # Submodule name -> class name, in call order.

  def capture(mdl: nn.Module, method_name: str) -> bool:
    # Called for every module method during init: remember each submodule's class as well.
    if mdl.name is not None and mdl.name not in kinds:
      kinds[mdl.name] = type(mdl).__name__
    return method_name == '__call__'

  def init(x):
    # capture_intermediates records every module's __call__ output, in call order.
    return module.init_with_output(jax.random.key(0), x, train=True,
                                   capture_intermediates=capture, mutable=True,
                                   **state_lib.class_labels_kwargs(module, x.shape[0]))

  output, variables = jax.eval_shape(init, example_input)
  params = variables.get('params', {})
  intermediates = variables['intermediates']
  rows = []
  # eval_shape returns dicts sorted by key; ``kinds`` keeps the order of the calls.
  for name in kinds:
    if name not in intermediates:
      continue
    out = intermediates[name]['__call__'][0]
    rows.append(LayerRow(name, kinds.get(name, ''), tuple(out.shape),
                         models.count_params(params.get(name, {}))))
  rows.append(LayerRow('output', type(module).__name__, tuple(output.shape), 0))
  return rows


def _format_table(title: str, rows: list[LayerRow], input_shape: tuple[int, ...]) -> str:
  header = ('Layer (type)', 'Output shape', 'Param #')
  body = [('input', str(input_shape), '')]
  body += [(f'{r.name} ({r.kind})', str(r.output_shape), f'{r.num_params:,}' if r.num_params
            else '0' if r.name != 'output' else '') for r in rows]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(3)]

  def fmt(line):
    return f'{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:>{widths[2]}}'

  rule = '-' * len(fmt(header))
  total = sum(r.num_params for r in rows)
  return '\n'.join([title, rule, fmt(header), rule] + [fmt(line) for line in body] +
                   [rule, f'Total params: {total:,}', ''])


def shape_arithmetic(image_size: int, upsample: str = 'transpose') -> str:
  """A few lines explaining how the layers reach ``image_size``.

  Args:
    image_size: 4·2^k.
    upsample: The generator's upsampling mode ('transpose' or 'resize_conv').
  """
  k = models.validate_image_size(image_size)
  sides = ' -> '.join(str(4 * 2**i) for i in range(k + 1))
  if upsample == 'transpose':
    up = ('a transposed conv with kernel 4, stride 2, padding 1 doubles the side: '
          'out = (in - 1)*2 - 2*1 + 4 = 2*in')
  else:
    up = 'nearest x2 resize then a 3x3 conv with padding 1 doubles the side: out = 2*in'
  return '\n'.join([
      f'Shape arithmetic for {image_size}x{image_size}: log2({image_size}/4) = {k} up/down '
      'blocks.',
      f'  G: z -> dense projection to 4x4 -> {k} upsampling blocks ({sides}); {up}.',
      f'  D: {k} stride-2 convs ({" -> ".join(reversed(sides.split(" -> ")))}); kernel 4, '
      'stride 2, padding 1 halves the side: out = (in + 2*1 - 4)/2 + 1 = in/2; a final 4x4 '
      "'VALID' conv maps 4x4 to 1x1 (one logit).",
  ])


def state_memory_line(config: Any, generator: nn.Module, discriminator: nn.Module) -> str:
  """'Train state: 72.6 MiB (...)': the bytes of the whole train state, from its shapes.

  The state holds more than the parameters: Adam's two moments per parameter, BatchNorm
  statistics, the EMA copy of G and the optimizers' counters. Activations come on top and
  grow with the batch; XLA's buffer assignment decides them, so they are not estimated here.
  """
  from dcgan_jax.data.device_resident import format_bytes  # pylint: disable=g-import-not-at-top

  use_ema = float(config.get('ema_decay', 0.0)) > 0
  adaptive = float(config.get('ada_target', 0.0)) > 0
  state = jax.eval_shape(lambda key: state_lib.create_gan_state(
      key, generator, discriminator, use_ema=use_ema,
      augment_probability=0.0 if adaptive else None), jax.random.key(0))
  total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)
              if hasattr(leaf, 'dtype') and not jax.dtypes.issubdtype(leaf.dtype,
                                                                      jax.dtypes.prng_key))
  parts = 'parameters, Adam moments, normalisation statistics' + (', EMA of G' if use_ema
                                                                    else '')
  return (f'Train state: {format_bytes(total)} ({parts}; per device, as each holds a replica), '
          'activations not counted.')


def summarize(config: Any) -> str:
  """The summary table of G and D for a run config, as text.

  Args:
    config: A run config (``image_size``, ``channels``, ``latent_dim``, widths, ``upsample``,
      ``output_activation``, ``dtype``; see configs/default.py).

  Returns:
    Multi-line text: G's table, D's table (per layer output shape ``(1, H, W, C)`` for a batch of
    one and parameter count, then the totals) and the shape arithmetic.

  Raises:
    UserError: the config describes an invalid model (e.g. an image size that is not 4·2^k).
  """
  generator = models.generator_from_config(config)
  discriminator = models.discriminator_from_config(config)
  z = jax.ShapeDtypeStruct((1, int(config.latent_dim)), jnp.float32)
  size, channels = int(config.image_size), int(config.channels)
  images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  # Spectral norm adds no parameters or layers of its own (its power-iteration state is not
  # trainable), and flax's wrapper cannot capture intermediates: tabulate the bare network.
  norm = discriminator.norm
  g_rows = layer_rows(generator, z)
  d_rows = layer_rows(discriminator.clone(norm='none') if norm == 'spectral' else discriminator,
                      images)
  g_total = sum(r.num_params for r in g_rows)
  d_total = sum(r.num_params for r in d_rows)
  # D returns logits [N]; show the last conv's (N, 1, 1, 1) too, which the rows already hold.
  return '\n'.join([
      _format_table(f'Generator ({config.upsample}, width {config.generator_width})', g_rows,
                    z.shape),
      _format_table(f'Discriminator (width {config.discriminator_width}, {norm} norm)', d_rows,
                    images.shape),
      f'Total params: G {g_total:,} + D {d_total:,} = {g_total + d_total:,}',
      state_memory_line(config, generator, discriminator),
      shape_arithmetic(size, config.upsample),
  ])


def main(argv: list[str] | None = None) -> None:
  """Command line: prints :func:`summarize` of ``--config`` (one-line errors, exit 2)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from dcgan_jax import command_line  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from dcgan_jax.errors import UserError, exit_with_user_error, first_line

  argv = list(sys.argv if argv is None else argv)
  flag_values = flags.FlagValues()
  # The override flags (--config.<field>) are found in the argv given at definition time.
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py); fields '
                                  'can be overridden with --config.<field>=<value>.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, "A training run's folder: the models of the config it "
                      'was trained with (instead of --config).', flag_values=flag_values)

  fail = exit_with_user_error
  command_line.exit_with_help_if_asked(flag_values, argv, __doc__)
  config_path = command_line.config_arg(argv)  # (As main reads it: -config=, --config X.)
  if config_path and config_path.endswith('.json'):
    # ml_collections loads Python files only; it said "NameError: name 'true' is not defined".
    fail(f'--config takes a Python config file (configs/*.py), not {config_path!r}; for '
         "a run's config.json pass --workdir=<the run's folder>.")

  # One config or run per call: absl keeps the last of repeated flags, and a second run after
  # --workdir was dropped without a word (as if `summary` compared runs, which it does not).
  workdirs = [arg for arg in argv[1:] if arg.split('=', 1)[0] in ('--workdir', '-workdir')]
  if len(workdirs) > 1:
    fail(f'summary describes one run; got --workdir {len(workdirs)} times. Run it once per '
         'run.')
  try:
    remaining = flag_values(argv)
    if len(remaining) > 1:
      fail(f'Unexpected arguments {" ".join(remaining[1:])!r}; pass options as --name=value '
           '(summary describes one config or run).')
    config = flag_values.config
    if config is not None:
      config.keys()  # The file is loaded lazily, on first use.
  except flags.Error as e:
    fail(first_line(e))
  except (AttributeError, KeyError) as e:  # ml_collections: --config.<unknown field>=...
    fail(command_line.unknown_config_field_message(e, argv))
  except Exception as e:  # pylint: disable=broad-except  # Unknown field, unloadable file.
    fail(f'Cannot load the config ({type(e).__name__}: {(str(e).splitlines() or [""])[0]}); '
         'pass --config=configs/<name>.py and fields listed in configs/default.py.')
  if flag_values.workdir:
    if config is not None:
      fail('Pass --config (a config file) or --workdir (a run), not both.')
    from dcgan_jax import sample  # pylint: disable=g-import-not-at-top
    try:
      config = sample.run_model_config(flag_values.workdir)
    except UserError as e:
      fail(str(e))
  if config is None:
    fail('--config or --workdir is required, e.g. --config=configs/default.py.')
  try:
    print(summarize(config))
  except UserError as e:
    fail(str(e))

if __name__ == '__main__':
  main()
