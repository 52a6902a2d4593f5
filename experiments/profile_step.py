r"""Where the train step's device time goes: a jax.profiler trace summarised per kernel and op.

  python experiments/profile_step.py --out_dir /tmp/prof            # GPU: b128, both dtypes
  python experiments/profile_step.py --tiny --out_dir /tmp/prof     # seconds on CPU
  python experiments/profile_step.py --model inception --batch 50 --out_dir /tmp/prof

For each dtype: compile and warm up the benchmark's step (``benchmark_train.bench_jax``'s
setup), write the optimized HLO (``step_<dtype>.hlo.txt``: which convs became cuDNN calls,
what got fused), trace ``--steps`` steps with ``jax.profiler`` (a Perfetto JSON trace, read by
``dcgan_jax.profiling.summarise_trace`` with that HLO) and print:

* wall ms/step during the trace, device-busy ms/step (union of kernel intervals), and the
  number of kernels per step: wall >> busy means the host (dispatch, launches) is the limit;
* the top kernels by device time, and the top JAX source operations (layer and pass, e.g.
  ``transpose(jvp(Discriminator))/Conv_1/conv_general_dilated``) by device time.

The summary also goes to ``profile_<dtype>.json``. Imports only the library core and numpy.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from dcgan_jax import profiling
from dcgan_jax.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_train as common  # pylint: disable=g-import-not-at-top,wrong-import-position



def _trace(compiled, run_steps, name: str, args) -> dict[str, Any]:
  """Writes ``compiled``'s optimized HLO, warms up, traces ``args.steps`` calls of
  ``run_steps``, and returns the trace summary with the wall time per step."""
  hlo_path = os.path.join(args.out_dir, f'{name}.hlo.txt')
  with open(hlo_path, 'w') as f:
    f.write(compiled.as_text())
  run_steps(args.warmup)
  trace_dir = os.path.join(args.out_dir, f'trace_{name}')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    run_steps(args.steps)
    wall_ms = (time.perf_counter() - t0) / args.steps * 1e3
  summary = profiling.summarise_trace(trace_dir, args.steps, hlo_text=compiled.as_text())
  summary.update(batch=args.batch, wall_ms_per_step_traced=wall_ms,
                 hlo=os.path.basename(hlo_path), custom_calls=_custom_calls(compiled.as_text()))
  return summary


def profile(dtype: str, args) -> dict[str, Any]:
  """Compiles, warms up, dumps HLO, traces ``args.steps`` steps; returns the summary."""
  model_options = ({'image_channel_multiple': args.image_channel_multiple}
                   if args.image_channel_multiple else None)
  step, state, batch = common.make_step(args.batch, dtype, args.image_size, args.width,
                                        model_options=model_options)
  compiled = step._step.lower(state, batch, jax.random.key(1)).compile()  # pylint: disable=protected-access
  run_steps, _ = common.step_runner(step, state, batch)
  name = f'step_{dtype}' + (f'_pad{args.image_channel_multiple}' if model_options else '')
  return dict(_trace(compiled, run_steps, name, args), dtype=dtype, model_options=model_options)


def profile_inception(args, form: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
  """The same for the FID Inception network, in the form and with the XLA options the
  extractor runs it (``form`` / XLA ``options`` from ``--network`` / ``--compiler_options``,
  to profile a candidate instead):
  preprocess, then the network, on a device-resident batch, as the extractor dispatches them.

  Random weights of the real shapes (benchmark_fid's), uint8 64x64 images resized to 299 as in
  an FID run, each side's default precision; one "step" is one batch.
  """
  import benchmark_fid  # pylint: disable=g-import-not-at-top
  from dcgan_jax import evaluation  # pylint: disable=g-import-not-at-top
  from dcgan_jax.evaluation import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  from dcgan_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  variables = jax.device_put(inception.inference_variables(
      benchmark_fid.random_inception_variables(), **form))
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8))
  # The extractor's own program for these options (a jit with options cannot be nested in
  # another jit, so preprocessing stays a program of its own, as in the extractor).
  network = extractor_lib.network_program(extractor_lib.options_key(options))

  def run_steps(n: int) -> None:
    out = None
    for _ in range(n):
      out = network(variables, evaluation.preprocess(images), precision='default')
    jax.block_until_ready(out)

  compiled = network.lower(variables, evaluation.preprocess(images), precision='default').compile()
  summary = _trace(compiled, run_steps, 'inception', args)
  return dict(summary, dtype='float32 (default precision)', model='inception', network=form,
              compiler_options=options,
              img_per_s=args.batch / summary['wall_ms_per_step_traced'] * 1e3)


def _custom_calls(hlo: str) -> list[tuple[str, int]]:
  return sorted(collections.Counter(line.split('custom_call_target="')[1].split('"')[0]
                                    for line in hlo.splitlines()
                                    if 'custom_call_target="' in line).items())


def print_summary(s: dict[str, Any]) -> None:
  """The library's report (dcgan_jax.profiling.format_summary) under this run's header."""
  print(f"\n== {s.get('model', 'train step')} {s['dtype']} batch {s['batch']}: wall "
        f"{s['wall_ms_per_step_traced']:.3f} ms/step (traced)", flush=True)
  print('custom calls:', s['custom_calls'])
  print('device rows:', s.get('device_threads'))
  print(profiling.format_summary(s), flush=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--dtypes', default='bfloat16,float32')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--out_dir', default='profile_out')
  parser.add_argument('--model', default='step', choices=('step', 'inception'),
                      help="'step': the train step per dtype; 'inception': the FID feature "
                           'network (pass --batch 50 for pytorch-fid\'s batch)')
  parser.add_argument('--image_channel_multiple', type=int, default=0,
                      help='step models with image channels padded to this multiple (8: the '
                           'tensor-core option; 1: none; 0: the models\' default, 8 for '
                           'bfloat16 and 1 for float32)')
  parser.add_argument('--network', default='',
                      help="inception only: the network form, as benchmark_fid's "
                           "--network_variants names one (e.g. poolmerged, unmerged+pad4); "
                           "default: the extractor's default form")
  parser.add_argument('--compiler_options', default='',
                      help='inception only: JSON {xla_option: value} the network is compiled '
                           'with (e.g. a winner of benchmark_fid --xla_variants)')
  parser.add_argument('--tiny', action='store_true', help='CPU smoke run: image 16, width 8')
  args = parser.parse_args(argv)
  if args.tiny:
    args.image_size, args.width, args.batch, args.steps, args.warmup = 16, 8, 16, 2, 1
    if args.model == 'inception':
      args.batch = 2
  os.makedirs(args.out_dir, exist_ok=True)
  if args.model == 'inception':
    import benchmark_fid  # pylint: disable=g-import-not-at-top
    # A mistake on the command line is one usage line, not a traceback.
    try:
      form = (benchmark_fid.parse_network_variants(args.network)[args.network] if args.network
              else benchmark_fid.default_form())
    except UserError as e:
      parser.error(str(e))
    example = 'e.g. {"xla_gpu_force_conv_nhwc": true}'
    try:
      options = json.loads(args.compiler_options or '{}')
    except json.JSONDecodeError as e:
      parser.error(f'--compiler_options is not JSON ({e}); {example}.')
    if not isinstance(options, dict):
      parser.error(f'--compiler_options must be a JSON object of XLA options, {example}.')
    summary = profile_inception(args, form, options)
    print_summary(summary)
    with open(os.path.join(args.out_dir, 'profile_inception.json'), 'w') as f:
      json.dump(summary, f, indent=1)
    return 0
  for dtype in [d for d in args.dtypes.split(',') if d]:
    summary = profile(dtype, args)
    print_summary(summary)
    suffix = f'_pad{args.image_channel_multiple}' if args.image_channel_multiple else ''
    with open(os.path.join(args.out_dir, f'profile_{dtype}{suffix}.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
