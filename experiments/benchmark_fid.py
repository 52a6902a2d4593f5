r"""Inception feature throughput, ours vs torchvision, and the wall time of a full FID-N.

  python experiments/benchmark_fid.py --out experiments/results/fid_h100.json
  python experiments/benchmark_fid.py --tiny --out /tmp/fid_cpu.json   # seconds on CPU

Both Inception-v3 networks get random weights built in memory (speed does not depend on the
values, and nothing is downloaded). Each side keeps its default GPU precision: ours
``precision='default'`` (TF32 convolutions on GPUs that have them), torch's defaults (cuDNN
convolutions may use TF32, matmuls do not).

Methods timed on 64x64 uint8 images (a DCGAN's output size), resized to 299 by each side:

* ``dcgan_jax_extractor``: ``InceptionExtractor(images)``: numpy in, numpy features out, the
  public API pytorch-fid users would swap in (includes the host->device copy).
* ``dcgan_jax_device``: the same jitted preprocessing and network on a device-resident batch.
* ``torchvision``: ``inception_v3(weights=None, aux_logits=False, init_weights=False)`` in eval
  mode under ``no_grad`` on a device-resident batch, with pytorch-fid's resize and scaling, and
  the pool features copied to the host per batch as pytorch-fid does.

FID-N: generate N images with our (random) generator, quantise to uint8, extract features,
accumulate statistics, and compute the distance to a reference, all on the device as the
library's FID path does; timed cold (with compilation) and warm, plus one warm run that waits
for the device between phases to split the time into generate / features / statistics /
distance. Imports only the library core, numpy and (optionally) torch.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_train as common  # pylint: disable=g-import-not-at-top,wrong-import-position

from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top,wrong-import-position
from dcgan_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dcgan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from dcgan_jax.evaluation import extractor as extractor_lib  # pylint: disable=wrong-import-position
from dcgan_jax.evaluation import inception  # pylint: disable=wrong-import-position

IMAGE_SIZE = 64


def random_inception_variables(seed: int = 0) -> dict[str, Any]:
  """FIDInceptionV3 variables of the right shapes with random values (no weights file)."""
  rng = np.random.default_rng(seed)
  shapes = inception.variable_shapes()

  def make(path, s):
    name = jax.tree_util.keystr(path)
    if 'var' in name:
      return np.ones(s.shape, s.dtype)  # BN variances must be positive.
    if 'mean' in name or 'bias' in name:
      return np.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) or 1
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def bench_extractor(variables, batch: int, images: np.ndarray, args) -> dict[str, Any]:
  extractor = evaluation.InceptionExtractor(variables, batch_size=batch, precision='default')

  def run_steps(n: int) -> None:
    for _ in range(n):
      out = extractor(images)
    assert out['pool'].shape == (images.shape[0], inception.POOL_FEATURES)

  return common.time_method(run_steps, 1, args.repeats, 1)


def default_form() -> dict[str, Any]:
  """The network form ``InceptionExtractor`` uses by default (the ``dcgan_jax_device`` row)."""
  params = inspect.signature(evaluation.InceptionExtractor.__init__).parameters
  return {name: params[name].default
          for name in ('merge_siblings', 'input_channels', 'merge_pool_branches')}


def parse_network_variants(text: str) -> dict[str, dict[str, Any]]:
  """``'unmerged,pad4,poolmerged'`` -> {name: the extractor's form options}.

  Each variant is the extractor's default form (:func:`default_form`) changed by '+'-joined
  parts: ``merged`` / ``unmerged`` (sibling 1x1 convolutions as one, or as written),
  ``poolmerged`` (merged, with the average-pool branches' 1x1 convolutions too) and ``padN``
  (RGB input padded with zero channels to N).
  """
  variants = {}
  for name in filter(None, (part.strip() for part in text.split(','))):
    form = default_form()
    for token in name.split('+'):
      if token in ('merged', 'unmerged'):
        form['merge_siblings'] = token == 'merged'
        form['merge_pool_branches'] = False
      elif token == 'poolmerged':
        form['merge_siblings'] = form['merge_pool_branches'] = True
      elif (token.startswith('pad') and token[3:].isdigit()
            and 3 <= int(token[3:]) <= inception.MAX_INPUT_CHANNELS):
        form['input_channels'] = int(token[3:])
      else:
        raise UserError(f'Unknown network variant part {token!r} in {name!r}; valid parts: '
                        f"'merged', 'unmerged', 'poolmerged' and 'padN' (N in "
                        f"3..{inception.MAX_INPUT_CHANNELS}), joined by '+', e.g. unmerged+pad4.")
    variants[name] = form
  return variants


def bench_device(variables, batch: int, images: np.ndarray, args,
                 compiler_options: dict[str, Any] | None = None,
                 fold: bool = True, **form) -> dict[str, Any]:
  """The extractor's two jitted programs on device-resident batches (no host copies), with
  the BatchNorm-folded variables the extractor uses (``fold=False``: the network as written,
  conv -> BatchNorm -> ReLU, to measure what folding gains).

  ``compiler_options``: XLA options for the network's program (``--xla_variants``);
  ``form``: ``merge_siblings`` / ``merge_pool_branches`` / ``input_channels``
  (``--network_variants``).
  """
  device_vars = jax.device_put(inception.inference_variables(variables, **form) if fold
                               else variables)
  chunks = [jax.device_put(images[i:i + batch]) for i in range(0, images.shape[0], batch)]
  # The extractor's own program for these options (one compiled program per option set).
  forward = functools.partial(
      extractor_lib.network_program(extractor_lib.options_key(compiler_options)),
      precision='default')

  def run_steps(n: int) -> None:
    for _ in range(n):
      outs = [forward(device_vars, evaluation.preprocess(c)) for c in chunks]
    jax.block_until_ready(outs)

  return common.time_method(run_steps, 1, args.repeats, 1)


def bench_torch(batch: int, images: np.ndarray, args) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.backends.cudnn.benchmark = True
  net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                        transform_input=False).to(device).eval()
  net.fc = torch.nn.Identity()  # pool_3 features, as FID uses.
  data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  chunks = list(torch.split(data, batch))

  def run_steps(n: int) -> None:
    with torch.no_grad():
      for _ in range(n):
        for c in chunks:
          x = F.interpolate(c.float() / 255.0, size=(299, 299), mode='bilinear',
                            align_corners=False)
          feats = net(2 * x - 1).cpu()
    if device.type == 'cuda':
      torch.cuda.synchronize()
    assert feats.shape[1] == inception.POOL_FEATURES

  return common.time_method(run_steps, 1, args.repeats, 1)


def fid_wall_time(variables, args) -> dict[str, Any]:
  """Generate N, features, statistics, distance; cold (incl. compilation) and warm.

  Each timed run is the library's FID path (as `dcgan_jax.evaluate` runs it): per batch, one
  jitted program generates and quantises to uint8 on the device, the extractor's
  `device_batches` runs Inception, and `FeatureStatistics.update` sums the device features on
  the device; nothing waits for the device until the statistics are read. Because the phases
  then overlap, one more warm run (`phases`) waits for the device after every phase of every
  batch to split the time into generate / features / statistics / distance (its total is a
  little above a run's wall time).
  """
  generator = models.Generator(image_size=IMAGE_SIZE, channels=3, width=args.width,
                               upsample='transpose')
  g_vars = generator.init(jax.random.key(0), jnp.zeros((2, generator.latent_dim)), train=False)

  @jax.jit
  def generate(v, key):
    z = jax.random.normal(key, (args.fid_batch, generator.latent_dim))
    return evaluation.to_uint8_jax(generator.apply(v, z, train=False))

  extractor = evaluation.InceptionExtractor(variables, batch_size=args.fid_batch)
  # A 2048-dim float64 eigendecomposition takes about a minute on a loaded 2-core CPU, so smoke
  # runs keep the first fid_dims features; real runs use all 2048.
  dims = args.fid_dims
  ref_mu, ref_sigma = np.zeros(dims), np.eye(dims)
  base = jax.random.key(1)

  def fid_once(sync: bool) -> tuple[float, dict[str, float]]:
    phases = {'generate_s': 0.0, 'features_s': 0.0, 'statistics_s': 0.0, 'distance_s': 0.0}
    wait = jax.block_until_ready if sync else (lambda x: x)
    stats = evaluation.FeatureStatistics()
    clock = time.perf_counter()

    def lap(phase: str) -> None:
      nonlocal clock
      now = time.perf_counter()
      phases[phase] += now - clock
      clock = now

    for start in range(0, args.fid_n, args.fid_batch):
      n = min(args.fid_batch, args.fid_n - start)
      images = generate(g_vars, jax.random.fold_in(base, start))
      images = wait(images if n == args.fid_batch else images[:n])
      lap('generate_s')
      for out in extractor.device_batches(images):
        pool = wait(out['pool'] if dims == out['pool'].shape[1] else out['pool'][:, :dims])
        lap('features_s')
        stats.update(pool)
        if sync and stats._device is not None:  # pylint: disable=protected-access
          jax.block_until_ready(stats._device._sums)  # pylint: disable=protected-access
        lap('statistics_s')
    mu, sigma = stats.mean, stats.covariance  # Waits for the device, folds into float64.
    lap('statistics_s')
    fid = evaluation.frechet_distance(mu, sigma, ref_mu, ref_sigma)
    lap('distance_s')
    return fid, phases

  runs = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    fid, phases = fid_once(sync=False)
    # Unsynced, the phase laps only time dispatch (the device work lands in the last one), so
    # report the wall time and the distance (which waits for its result) only.
    runs.append({'wall_s': time.perf_counter() - t0, 'fid': fid,
                 'distance_s': phases['distance_s']})
  fid, phases = fid_once(sync=True)
  phases['total_s'] = sum(phases.values())
  warm = runs[1:] or runs
  return {'n': args.fid_n, 'batch': args.fid_batch, 'dims': dims, 'cold_s': runs[0]['wall_s'],
          'warm_s': float(np.median([r['wall_s'] for r in warm])), 'runs': runs,
          'phases': dict(phases, fid=fid, note='one more warm run, waiting for the device after '
                         'every phase of every batch')}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_sizes', default='50,500', help='feature batch sizes')
  parser.add_argument('--num_images', type=int, default=5000,
                      help='images per timed feature run (a multiple of each batch is used)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--fid_n', type=int, default=50000, help='samples of the FID run (0: skip)')
  parser.add_argument('--fid_batch', type=int, default=500)
  parser.add_argument('--width', type=int, default=64, help="generator width (ngf)")
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--torch_threads', type=int, default=0)
  parser.add_argument('--out', default='')
  parser.add_argument('--device_kind', default='')
  parser.add_argument('--tiny', action='store_true',
                      help='CPU smoke run: batch 8, 8 images, FID-16 with batch 8, 2 repeats')
  parser.add_argument('--fid_dims', type=int, default=inception.POOL_FEATURES,
                      help='feature dims kept for statistics and distance (smoke runs only)')
  parser.add_argument('--unfolded', action=argparse.BooleanOptionalAction, default=True,
                      help='also time the device-resident network without BatchNorm folded '
                           'into the convolutions (what folding gains)')
  parser.add_argument('--network_variants', default='',
                      help="comma-separated network forms to also time on the device: the "
                           "extractor's default form changed by '+'-joined parts: merged / "
                           "unmerged (sibling 1x1 convolutions as one, or as written), "
                           "poolmerged (merged with the average-pool branches' 1x1 convolutions "
                           "too), padN (RGB input padded to N channels); e.g. "
                           "unmerged,pad4,poolmerged")
  common.add_combine_flag(parser, 'network forms and XLA variants')
  parser.add_argument('--xla_variants', default='',
                      help='JSON {name: {xla_option: value}}: also time the device-resident '
                           'features with the network compiled with each set of XLA options')
  if '--tiny' in (sys.argv[1:] if argv is None else argv):
    # Tiny defaults; flags given explicitly still win.
    parser.set_defaults(batch_sizes='8', num_images=8, repeats=2, fid_n=16, fid_batch=8, width=8,
                        torch_threads=1, fid_dims=64)
  args = parser.parse_args(argv)
  args.batch_sizes = common._positive_ints(args.batch_sizes)  # pylint: disable=protected-access
  args.xla_variants = common.parse_xla_variants(args.xla_variants)
  args.network_variants = parse_network_variants(args.network_variants)
  if min(args.num_images, args.repeats, args.fid_batch, args.width) < 1 or args.fid_n < 0:
    raise UserError('num_images, repeats, fid_batch and width must be positive, fid_n >= 0.')
  if not 2 <= args.fid_dims <= inception.POOL_FEATURES:
    raise UserError(f'fid_dims must be in 2..{inception.POOL_FEATURES} (got {args.fid_dims}).')
  if 0 < args.fid_n < 2:
    raise UserError('fid_n must be 0 (skip) or at least 2 (a covariance needs two samples).')
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  variables = random_inception_variables()
  rows = []
  use_torch = not args.no_torch and common._have_torch()  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  for batch in args.batch_sizes:
    count = max(batch, args.num_images // batch * batch)
    images = rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    group = []

    def add(row: dict[str, Any]) -> None:
      group.append(dict(row, batch=batch, images=count))
      common.report_progress(args, 'inception_fid', rows + group)

    if use_torch:
      add(dict(bench_torch(batch, images, args), method='torchvision'))
    add(dict(bench_extractor(variables, batch, images, args), method='dcgan_jax_extractor'))
    form = default_form()
    add(dict(bench_device(variables, batch, images, args, **form), method='dcgan_jax_device',
             network=form))
    if args.unfolded:
      add(dict(bench_device(variables, batch, images, args, fold=False),
               method='dcgan_jax_device[unfolded]'))
    default_ms = next(r['ms_per_step'] for r in group if r['method'] == 'dcgan_jax_device')
    network_ms, xla_ms = {}, {}
    for name, form in args.network_variants.items():
      result = common.run_variant(
          name, lambda f=form: bench_device(variables, batch, images, args, **f))
      network_ms[name] = result['ms_per_step']
      add(dict(result, method=f'dcgan_jax_device[{name}]', network=form))
    for name, options in args.xla_variants.items():
      result = common.run_variant(
          name, lambda o=options: bench_device(variables, batch, images, args, o))
      xla_ms[name] = result['ms_per_step']
      add(dict(result, method=f'dcgan_jax_device[{name}]', compiler_options=options))
    best_network = common.fastest_variant(network_ms, default_ms, args.combine)
    best_xla = common.fastest_variant(xla_ms, default_ms, args.combine)
    if best_network and best_xla:  # Do two wins add up? Timed together in the same run.
      form, options = args.network_variants[best_network], args.xla_variants[best_xla]
      result = common.run_variant(f'{best_network}+{best_xla}', lambda: bench_device(
          variables, batch, images, args, options, **form))
      add(dict(result, method=f'dcgan_jax_device[{best_network}+{best_xla}]', network=form,
               compiler_options=options))
    anchor = None
    for row in group:
      row['img_per_s'] = count / (row['ms_per_step'] * 1e-3)
      if row['method'] == 'torchvision':
        anchor = row['img_per_s']
    for row in group:
      row['vs_torch'] = row['img_per_s'] / anchor if anchor else None
    rows += group
  table = common.print_table(rows, [('method', 'method', 's'), ('batch', 'batch', 'd'),
                                    ('images', 'images', 'd'), ('img_per_s', 'img/s', '.1f'),
                                    ('vs_torch', 'x torch', '.2f')])
  fid = fid_wall_time(variables, args) if args.fid_n else None
  if fid:
    p = fid['phases']
    print(f"FID-{fid['n']} (batch {fid['batch']}): cold {fid['cold_s']:.2f} s, "
          f"warm {fid['warm_s']:.2f} s; synced phases: generate {p['generate_s']:.2f} s, "
          f"features {p['features_s']:.2f} s, statistics {p['statistics_s']:.2f} s, "
          f"distance {p['distance_s']:.2f} s", flush=True)
  env = common.environment(args.device_kind or None)
  return {
      'benchmark': 'inception_fid',
      'environment': env,
      'settings': {'image_size': IMAGE_SIZE, 'inception_input': inception.INPUT_SIZE,
                   'repeats': args.repeats, 'tiny': args.tiny, 'precision_ours': 'default',
                   'precision_torch': 'PyTorch defaults', 'weights': 'random, in memory'},
      'rows': rows,
      'ratios_vs_torch': {f"b{r['batch']}_{r['method']}": r['vs_torch'] for r in rows
                          if r['method'] != 'torchvision' and r['vs_torch'] is not None},
      'xla_variants': args.xla_variants,
      'network_variants': args.network_variants,
      'fid': fid,
      'targets': {'features_b50_vs_torch': 3.0, 'fid50k_warm_s': 10.0},
      'targets_apply': not args.tiny and 'H100' in env['device_kind'],
      'table': table,
  }


def main(argv: list[str] | None = None) -> int:
  return common.benchmark_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
