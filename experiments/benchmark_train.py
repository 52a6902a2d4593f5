r"""Train-step throughput: dcgan_jax's jitted step vs the pytorch/examples DCGAN loop, one run.

Both sides train the paper's DCGAN (transposed-conv G, strided-conv D, BatchNorm, Adam 2e-4 /
0.5) on random images that already live on the device, so only the update itself is timed.

  python experiments/benchmark_train.py --out experiments/results/train_h100.json
  python experiments/benchmark_train.py --tiny --out /tmp/train_cpu.json   # seconds on CPU

Timing, per method: compile and warm up, then ``--repeats`` timed runs of ``--steps`` steps,
each ended by a device sync (``block_until_ready`` / ``torch.cuda.synchronize``); the median
run gives ms/step. TFLOP/s counts the reference loop's work, :func:`step_flops`, for both sides.

Imports only the library core, numpy and (optionally) torch: no TensorFlow, tfds, clu.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import models
from dcgan_jax import parallel
from dcgan_jax import state as state_lib
from dcgan_jax import train_step as train_step_lib
from dcgan_jax.errors import UserError

LATENT_DIM = 100
# Issue 5's targets: our img/s over the torch anchor's at the same batch.
TARGETS = {'b128_bfloat16': 4.0, 'b128_float32': 2.0, 'b1024_bfloat16': 3.0}


# --- Work model ------------------------------------------------------------------------------

def _num_blocks(image_size: int) -> int:
  return models.validate_image_size(image_size)


def generator_macs(image_size: int = 64, width: int = 64, channels: int = 3,
                   latent_dim: int = LATENT_DIM) -> int:
  """Multiply-accumulates of one G forward pass for one image (BN and activations excluded).

  The projection is ``latent · 16 · C0``; a 4x4 stride-2 transposed conv from ``h×h×Cin`` to
  ``2h×2h×Cout`` does ``h² · Cin · Cout · 16`` useful MACs (each input pixel feeds a 4x4 patch).
  """
  k = _num_blocks(image_size)
  features = width * 2 ** (k - 1)
  macs = latent_dim * 16 * features
  side = 4
  for _ in range(k - 1):
    macs += side * side * features * (features // 2) * 16
    features //= 2
    side *= 2
  return macs + side * side * features * channels * 16


def discriminator_macs(image_size: int = 64, width: int = 64, channels: int = 3) -> int:
  """MACs of one D forward pass for one image: 4x4 stride-2 convs, then a 4x4 valid logit conv.

  A conv to ``h×h×Cout`` from ``Cin`` channels does ``h² · Cout · Cin · 16`` MACs.
  """
  k = _num_blocks(image_size)
  macs, side, c_in = 0, image_size, channels
  for i in range(k):
    side //= 2
    c_out = width * 2 ** i
    macs += side * side * c_out * c_in * 16
    c_in = c_out
  return macs + c_in * 16


def step_flops(image_size: int = 64, width: int = 64, channels: int = 3) -> float:
  """FLOPs of one reference training step per image: ``2 · MACs · (3·G + 9·D)``.

  The pytorch/examples loop runs G forward once and D forward three times (real, detached
  fake, fake after D's update); backward costs about twice its forward (input and weight
  gradients), for D on real and fake (4·D) and for D then G in the G step (2·D + 2·G).
  So ``G + 3·D + 4·D + 2·D + 2·G = 3·G + 9·D``; at 64x64, width 64 that is ≈ 2.5 GFLOP.
  dcgan_jax's step recomputes G's forward in its G update (``4·G + 9·D``, +8%), which is not
  credited: both sides are measured against the same useful work.
  """
  g = generator_macs(image_size, width, channels)
  d = discriminator_macs(image_size, width, channels)
  return 2.0 * (3 * g + 9 * d)


def activation_elements(image_size: int = 64, width: int = 64, channels: int = 3) -> tuple[int, int]:
  """Elements of the outputs of every layer of one G and one D forward, per image."""
  k = _num_blocks(image_size)
  g = 0
  side, features = 4, width * 2 ** (k - 1)
  for _ in range(k):
    g += side * side * features
    side, features = side * 2, features // 2
  g += image_size * image_size * channels
  d = image_size * image_size * channels
  side = image_size
  for i in range(k):
    side //= 2
    d += side * side * width * 2 ** i
  return g, d + 1


def param_count(image_size: int = 64, width: int = 64, channels: int = 3) -> int:
  """Parameters of G and D: their conv kernels (BN scales and biases add < 0.1%)."""
  k = _num_blocks(image_size)
  features = width * 2 ** (k - 1)
  g = LATENT_DIM * 16 * features
  for _ in range(k - 1):
    g += features * (features // 2) * 16
    features //= 2
  g += features * channels * 16
  d, c_in = 0, channels
  for i in range(k):
    d += c_in * width * 2 ** i * 16
    c_in = width * 2 ** i
  return g + d + c_in * 16


def step_bytes(batch: int, dtype_bytes: int, image_size: int = 64, width: int = 64,
               channels: int = 3) -> float:
  """A lower-bound estimate of HBM traffic of one step (bytes); a model, not a measurement.

  Activations: 5 forward passes' outputs (2·G + 3·D, counting ours) each written once, read once
  for BN statistics and once by the next layer (3 touches, BN+activation fused into the
  consumer); their backward passes touch about twice that (6). Parameters and Adam moments in
  float32: params read twice (forward, update), gradient written and read, m and v read and
  written, params written: ≈ 8 touches of 4 bytes per parameter per optimizer.
  """
  g, d = activation_elements(image_size, width, channels)
  forward = 2 * g + 3 * d
  activations = batch * forward * (3 + 6) * dtype_bytes
  return float(activations + 8 * 4 * param_count(image_size, width, channels))


# --- Timing ----------------------------------------------------------------------------------

def time_method(run_steps: Callable[[int], None], steps: int, repeats: int,
                warmup: int) -> dict[str, Any]:
  """Times ``run_steps(n)`` (which must end with a device sync) and returns ms/step stats."""
  t0 = time.perf_counter()
  run_steps(warmup)  # Compilation, autotuning, allocator growth.
  warmup_s = time.perf_counter() - t0
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_steps(steps)
    runs.append((time.perf_counter() - t0) / steps * 1e3)
  return {'ms_per_step': statistics.median(runs), 'ms_per_step_runs': runs,
          'warmup_s': warmup_s}


def environment(device_kind: str | None = None) -> dict[str, Any]:
  """Device, versions and date for the JSON record."""
  device = jax.devices()[0]
  info = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'jax_backend': jax.default_backend(),
      'jax_device': device.device_kind,
      'jax_device_count': jax.device_count(),
      'device_kind': device_kind or device.device_kind,
      'jax_version': jax.__version__,
      'python': platform.python_version(),
      'host': platform.node(),
      # Which copy of the library ran (a baseline copy can be timed beside the current one).
      'dcgan_jax_path': os.path.dirname(os.path.abspath(models.__file__)),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top
    info['torch_version'] = torch.__version__
    info['torch_device'] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else 'cpu')
  except ImportError:
    info['torch_version'] = None
  return info


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
  """Prints rows as a fixed-width table; ``columns`` are (key, header, format)."""
  cells = [[h for _, h, _ in columns]]
  for row in rows:
    cells.append([('' if row.get(k) is None else format(row[k], f)) for k, _, f in columns])
  widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
  lines = ['  '.join(c[i].rjust(widths[i]) for i in range(len(columns))) for c in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  text = '\n'.join(lines)
  print(text, flush=True)
  return text


def _strict(value: Any) -> Any:
  """NaN/inf (e.g. a loop rate lost in timing noise) become null: strict JSON readers choke."""
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def write_json(path: str, record: dict[str, Any], quiet: bool = False) -> None:
  """Writes ``record`` as strict, indented JSON, creating the folder.

  Written to a temporary file and renamed, so a reader (or a kill) never sees half a file.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(_strict(record), f, indent=2, sort_keys=True, allow_nan=False)
  os.replace(path + '.tmp', path)
  if not quiet:
    print(f'wrote {path}', flush=True)


def report_progress(args: argparse.Namespace, benchmark: str, rows: list[dict[str, Any]]) -> None:
  """Prints the newest measured row at once and, with ``args.out``, writes the rows so far.

  Why: on a GPU machine each benchmark runs under a time limit; killed there, a benchmark
  that reported only at the end would leave nothing. The partial record has
  ``"complete": false``; the final record replaces it.
  """
  if args.out:  # Written before the line is printed: what the log shows is on disk.
    write_json(args.out, {'benchmark': benchmark, 'complete': False, 'rows': rows,
                          'environment': environment(args.device_kind or None)}, quiet=True)
  print('measured ' + json.dumps(_strict(rows[-1]), sort_keys=True), flush=True)


# --- Ours ------------------------------------------------------------------------------------

def make_step(batch: int, dtype: str, image_size: int, width: int,
              compiler_options: dict[str, Any] | None = None,
              model_options: dict[str, Any] | None = None):
  """Our DataParallelStep (jit of shard_map over all devices, donated state) with its placed
  initial state and one placed batch of random uint8 images: ``(step, state, images)``.

  ``compiler_options``: XLA options for the step's program only (``--xla_variants``); None
  means the library's default (``DataParallelStep(compiler_options='auto')``).
  ``model_options``: extra keyword arguments for both models (``--model_variants``), e.g.
  ``{"image_channel_multiple": 8}``; they must leave the parameters' shapes unchanged, as the
  initial state is shared.
  """
  generator = models.Generator(image_size=image_size, channels=3, latent_dim=LATENT_DIM,
                               width=width, upsample='transpose', dtype=dtype,
                               **(model_options or {}))
  discriminator = models.Discriminator(image_size=image_size, channels=3, width=width,
                                       dtype=dtype, **(model_options or {}))
  # None: the library's default ('auto': e.g. CUDA graphs with convolutions on NVIDIA GPUs).
  step = parallel.DataParallelStep(
      generator, discriminator, train_step_lib.StepConfig(),
      compiler_options='auto' if compiler_options is None else compiler_options)
  state = step.place_state(_initial_state(image_size, width))
  images = np.random.default_rng(0).integers(
      0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
  return step, state, step.place_batch(images)


def bench_jax(batch: int, dtype: str, args,
              compiler_options: dict[str, Any] | None = None,
              model_options: dict[str, Any] | None = None) -> dict[str, Any]:
  """Times our step (:func:`make_step`)."""
  run_steps, holder = step_runner(*make_step(batch, dtype, args.image_size, args.width,
                                             compiler_options, model_options))
  result = time_method(run_steps, args.steps, args.repeats, args.warmup)
  if not np.isfinite(float(np.asarray(metrics_probe(holder)))):
    raise RuntimeError('the JAX step produced a non-finite state')
  return result


_STATES: dict[tuple[int, int], Any] = {}


def _initial_state(image_size: int, width: int):
  """One initial state per model size, shared by every dtype and batch (params stay float32).

  Eager Flax init costs seconds on CPU; ``place_state`` copies, so donation leaves this intact.
  """
  if (image_size, width) not in _STATES:
    generator = models.Generator(image_size=image_size, channels=3, latent_dim=LATENT_DIM,
                                 width=width, upsample='transpose')
    discriminator = models.Discriminator(image_size=image_size, channels=3, width=width)
    _STATES[image_size, width] = state_lib.create_gan_state(jax.random.key(0), generator,
                                                            discriminator)
  return _STATES[image_size, width]


def step_runner(step, state, real) -> tuple[Callable[[int], None], dict[str, Any]]:
  """``run_steps(n)`` for :func:`time_method`: n steps on one placed batch, then a device sync.

  The state is carried in the returned holder (``holder['state']``) from call to call, as the
  step donates it; each step gets a fresh key.
  """
  key = jax.random.key(1)
  holder = {'state': state, 'i': 0}

  def run_steps(n: int) -> None:
    s = holder['state']
    for _ in range(n):
      s, metrics = step(s, real, parallel.fold_in(key, holder['i']))
      holder['i'] += 1
    jax.block_until_ready((s, metrics))
    holder['state'] = s

  return run_steps, holder


def metrics_probe(holder: dict[str, Any]) -> jax.Array:
  """A scalar of the final state, checked finite so a broken step cannot look fast."""
  leaves = jax.tree.leaves(holder['state'].generator.params)
  return jnp.sum(leaves[0])


# --- The torch anchor ------------------------------------------------------------------------

def torch_models(image_size: int, width: int, nz: int = LATENT_DIM, nc: int = 3):
  """pytorch/examples/dcgan's Generator and Discriminator, generalised to 4·2^k images."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  k = _num_blocks(image_size)
  features = width * 2 ** (k - 1)
  g_layers = [nn.ConvTranspose2d(nz, features, 4, 1, 0, bias=False), nn.BatchNorm2d(features),
              nn.ReLU(True)]
  for _ in range(k - 1):
    g_layers += [nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                 nn.BatchNorm2d(features // 2), nn.ReLU(True)]
    features //= 2
  g_layers += [nn.ConvTranspose2d(features, nc, 4, 2, 1, bias=False), nn.Tanh()]
  d_layers, c_in = [], nc
  for i in range(k):
    d_layers.append(nn.Conv2d(c_in, width * 2 ** i, 4, 2, 1, bias=False))
    if i > 0:
      d_layers.append(nn.BatchNorm2d(width * 2 ** i))
    d_layers.append(nn.LeakyReLU(0.2, inplace=True))
    c_in = width * 2 ** i
  d_layers += [nn.Conv2d(c_in, 1, 4, 1, 0, bias=False), nn.Sigmoid()]

  def weights_init(m):
    name = m.__class__.__name__
    if 'Conv' in name:
      nn.init.normal_(m.weight, 0.0, 0.02)
    elif 'BatchNorm' in name:
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)

  net_g, net_d = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
  net_g.apply(weights_init)
  net_d.apply(weights_init)
  return net_g, net_d


def bench_torch(batch: int, args) -> dict[str, Any]:
  """The pytorch/examples DCGAN iteration, fp32 with PyTorch's defaults, cudnn.benchmark on.

  The example's per-iteration ``.item()`` prints are left out, which only helps the anchor.
  """
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cudnn.benchmark = True  # What the example and most users set.
  if getattr(args, 'torch_threads', 0):
    # OpenMP workers spinning against JAX's thread pool on a few shared cores make CPU smoke
    # runs 100x slower; GPU runs keep PyTorch's default.
    torch.set_num_threads(args.torch_threads)
  torch.manual_seed(0)
  net_g, net_d = (m.to(device) for m in torch_models(args.image_size, args.width))
  criterion = torch.nn.BCELoss()
  opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  real = torch.rand(batch, 3, args.image_size, args.image_size, device=device) * 2 - 1
  real_label, fake_label = 1.0, 0.0

  def sync():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  def run_steps(n: int) -> None:
    for _ in range(n):
      net_d.zero_grad()
      label = torch.full((batch,), real_label, dtype=torch.float, device=device)
      output = net_d(real).view(-1)
      err_d_real = criterion(output, label)
      err_d_real.backward()
      noise = torch.randn(batch, LATENT_DIM, 1, 1, device=device)
      fake = net_g(noise)
      label.fill_(fake_label)
      output = net_d(fake.detach()).view(-1)
      err_d_fake = criterion(output, label)
      err_d_fake.backward()
      opt_d.step()
      net_g.zero_grad()
      label.fill_(real_label)
      output = net_d(fake).view(-1)
      err_g = criterion(output, label)
      err_g.backward()
      opt_g.step()
    sync()
    run_steps.last = float(err_g.detach().cpu())

  result = time_method(run_steps, args.steps, args.repeats, args.warmup)
  if not np.isfinite(run_steps.last):
    raise RuntimeError('the torch anchor produced a non-finite loss')
  return result


# --- Main ------------------------------------------------------------------------------------

def _positive_ints(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(',') if v]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise UserError(f'expected comma-separated positive integers such as 128,1024 (got {text!r}).')
  return values


def run_variant(name: str, time_it: Callable[[], dict[str, Any]],
                *nan_fields: str) -> dict[str, Any]:
  """``time_it()``, or a record of its error: one option set XLA refuses must not end the run.

  The record has ``ms_per_step`` (and each of ``nan_fields``) NaN and the error's first line.
  """
  try:
    return time_it()
  except Exception as e:  # pylint: disable=broad-except
    error = str(e).strip().splitlines()[0][:300]
    print(f'variant {name} failed: {error}', flush=True)
    return {'ms_per_step': float('nan'), **{k: float('nan') for k in nan_fields}, 'error': error}


COMBINE_MODES = ('winners', 'always', 'off')


def add_combine_flag(parser: argparse.ArgumentParser, kinds: str) -> None:
  parser.add_argument(
      '--combine', default='winners', choices=COMBINE_MODES,
      help=f'after the variants, also time the fastest of the {kinds} together: "winners" '
           'only when both beat the default (so one run shows whether two wins add up), '
           '"always" even when they do not (smoke tests), "off" never')


def fastest_variant(ms_by_name: dict[str, float], default_ms: float, mode: str) -> str | None:
  """The name with the lowest ms (failed variants are NaN and never chosen), or None.

  Args:
    ms_by_name: variant name -> measured ms per step (NaN where the variant failed).
    default_ms: the default's ms per step in the same run.
    mode: 'winners' (only a variant faster than the default), 'always' or 'off'.
  """
  timed = {name: ms for name, ms in ms_by_name.items() if math.isfinite(ms)}
  if mode == 'off' or not timed:
    return None
  best = min(timed, key=timed.get)
  return best if mode == 'always' or timed[best] < default_ms else None


def parse_variants(text: str, flag: str = '--xla_variants', what: str = 'XLA options',
                   example: str = '{"graph1": {"xla_gpu_graph_min_graph_size": 1}}'
                   ) -> dict[str, dict[str, Any]]:
  """``flag``: '' or a JSON object mapping a variant name to a dict of options."""
  if not text:
    return {}
  try:
    variants = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f'{flag} is not JSON ({e}); give {{"name": {{"option": value}}}}, e.g. '
                    f'{example}.') from None
  if not isinstance(variants, dict) or not all(
      isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in variants.values()):
    raise UserError(f'{flag} must map each name to a dict of {what}, e.g. {example}.')
  return variants


def parse_xla_variants(text: str) -> dict[str, dict[str, Any]]:
  """``--xla_variants``: '' or a JSON object mapping a name to a dict of XLA options."""
  return parse_variants(text)


def parse_model_variants(text: str) -> dict[str, dict[str, Any]]:
  """``--model_variants``: '' or a JSON object mapping a name to model keyword arguments."""
  return parse_variants(text, '--model_variants', 'model keyword arguments',
                        '{"pad8": {"image_channel_multiple": 8}}')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_sizes', default='128,1024', help='global batch sizes, e.g. 128,1024')
  parser.add_argument('--dtypes', default='float32,bfloat16', help='our compute dtypes')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--width', type=int, default=64, help='ngf = ndf')
  parser.add_argument('--steps', type=int, default=50, help='steps per timed repeat')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=10, help='untimed steps (includes compile)')
  parser.add_argument('--no_torch', action='store_true', help='skip the torch anchor')
  parser.add_argument('--xla_variants', default='',
                      help='JSON {name: {xla_option: value}}: also time our step compiled with '
                           'each set of XLA options, e.g. \'{"graph1": '
                           '{"xla_gpu_graph_min_graph_size": 1}}\'')
  parser.add_argument('--model_variants', default='',
                      help='JSON {name: {model_argument: value}}: also time our step with models '
                           'built with each set of extra arguments (same parameters), e.g. '
                           '\'{"pad8": {"image_channel_multiple": 8}}\'')
  add_combine_flag(parser, 'XLA and model variants')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='torch CPU threads (0: PyTorch default; --tiny uses 1)')
  parser.add_argument('--out', default='', help='JSON path (default: print only)')
  parser.add_argument('--device_kind', default='', help='label for the card, e.g. "H100 SXM"')
  parser.add_argument('--tiny', action='store_true',
                      help='CPU smoke run: image 16, width 8, batch 16, 2 steps')
  if '--tiny' in (sys.argv[1:] if argv is None else argv):
    # Tiny defaults; flags given explicitly still win.
    parser.set_defaults(image_size=16, width=8, batch_sizes='16', steps=2, repeats=2, warmup=1,
                        torch_threads=1)
  args = parser.parse_args(argv)
  args.batch_sizes = _positive_ints(args.batch_sizes)
  args.xla_variants = parse_xla_variants(args.xla_variants)
  args.model_variants = parse_model_variants(args.model_variants)
  args.dtypes = [d for d in args.dtypes.split(',') if d]
  for d in args.dtypes:
    models.resolve_dtype(d)
  models.validate_image_size(args.image_size)
  if min(args.steps, args.repeats) < 1 or args.warmup < 1 or args.width < 1:
    raise UserError('steps, repeats, warmup and width must be positive integers.')
  for b in args.batch_sizes:
    parallel.check_batch_size(b, jax.device_count())
  return args


def _have_torch() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs every configuration and returns the JSON record."""
  flops = step_flops(args.image_size, args.width)
  rows = []
  use_torch = not args.no_torch and _have_torch()
  for batch in args.batch_sizes:
    anchor = None
    if use_torch:
      t = bench_torch(batch, args)
      anchor = batch / t['ms_per_step'] * 1e3
      rows.append(dict(t, method='torch_examples', dtype='float32', batch=batch))
      report_progress(args, 'train_step', rows)
    for dtype in args.dtypes:
      rows.append(dict(bench_jax(batch, dtype, args), method='dcgan_jax', dtype=dtype,
                       batch=batch))
      report_progress(args, 'train_step', rows)
      variants = [(name, options, None) for name, options in args.xla_variants.items()]
      variants += [(name, None, options) for name, options in args.model_variants.items()]
      default_ms = rows[-1]['ms_per_step']
      xla_ms, model_ms = {}, {}

      def time_variant(name, compiler_options, model_options) -> float:
        result = run_variant(name, lambda: bench_jax(batch, dtype, args, compiler_options,
                                                     model_options))
        rows.append(dict(result, method=f'dcgan_jax[{name}]', dtype=dtype, batch=batch,
                         compiler_options=compiler_options, model_options=model_options))
        report_progress(args, 'train_step', rows)
        return result['ms_per_step']

      for name, compiler_options, model_options in variants:
        ms = time_variant(name, compiler_options, model_options)
        (xla_ms if model_options is None else model_ms)[name] = ms
      best_xla = fastest_variant(xla_ms, default_ms, args.combine)
      best_model = fastest_variant(model_ms, default_ms, args.combine)
      if best_xla and best_model:  # Do two wins add up? Timed together in the same run.
        time_variant(f'{best_xla}+{best_model}', args.xla_variants[best_xla],
                     args.model_variants[best_model])
    for row in rows:
      if row['batch'] != batch:
        continue
      row['img_per_s'] = batch / row['ms_per_step'] * 1e3
      row['tflop_per_s'] = flops * batch / (row['ms_per_step'] * 1e-3) / 1e12
      row['vs_torch'] = row['img_per_s'] / anchor if anchor else None
  ratios, variant_ratios = {}, {}
  for row in rows:
    key = f"b{row['batch']}_{row['dtype']}"
    if row['method'] == 'dcgan_jax' and row['vs_torch'] is not None:
      ratios[key] = row['vs_torch']
    elif row['method'].startswith('dcgan_jax[') and row['vs_torch'] is not None:
      variant_ratios[f"{key}_{row['method'][len('dcgan_jax['):-1]}"] = row['vs_torch']
  table = print_table(rows, [('method', 'method', 's'), ('dtype', 'dtype', 's'),
                             ('batch', 'batch', 'd'), ('ms_per_step', 'ms/step', '.3f'),
                             ('img_per_s', 'img/s', '.1f'), ('tflop_per_s', 'TFLOP/s', '.3f'),
                             ('vs_torch', 'x torch', '.2f')])
  return {
      'benchmark': 'train_step',
      'environment': environment(args.device_kind or None),
      'settings': {'image_size': args.image_size, 'width': args.width, 'channels': 3,
                   'latent_dim': LATENT_DIM, 'steps': args.steps, 'repeats': args.repeats,
                   'warmup': args.warmup, 'tiny': args.tiny, 'upsample': 'transpose',
                   'data': 'device-resident random images',
                   # What the plain 'dcgan_jax' rows compiled with (the library's default).
                   'default_compiler_options': parallel.default_compiler_options(jax.devices())},
      'flop_model': {'flops_per_image_step': flops,
                     'formula': '2 * MACs * (3*G_fwd + 9*D_fwd), reference loop work',
                     'generator_macs': generator_macs(args.image_size, args.width),
                     'discriminator_macs': discriminator_macs(args.image_size, args.width)},
      'rows': rows,
      'ratios_vs_torch': ratios,
      'xla_variants': args.xla_variants,
      'model_variants': args.model_variants,
      'variant_ratios_vs_torch': variant_ratios,
      'targets_vs_torch': TARGETS,
      'targets_apply': not args.tiny and 'H100' in environment(args.device_kind or None)[
          'device_kind'],
      'table': table,
  }


def benchmark_main(parse: Callable[[list[str] | None], argparse.Namespace],
                   bench: Callable[[argparse.Namespace], dict[str, Any]],
                   argv: list[str] | None = None) -> int:
  """A benchmark's command line: a bad flag is one line and exit 2; else run, write ``--out``."""
  try:
    args = parse(argv)
  except UserError as e:
    print(e, file=sys.stderr)
    return 2
  record = bench(args)
  if args.out:
    write_json(args.out, dict(record, complete=True))
  return 0


def main(argv: list[str] | None = None) -> int:
  return benchmark_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
