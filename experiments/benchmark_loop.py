r"""Whole training loop vs step-only throughput on a prepared synthetic image folder.

  python experiments/benchmark_loop.py --out experiments/results/loop_h100.json
  python experiments/benchmark_loop.py --tiny --out /tmp/loop_cpu.json   # seconds on CPU

Writes ``--num_images`` smooth random images (default 20,000 at 64x64) as one ``.npy`` file (the
``array`` dataset, read by numpy and kept on the devices: no TensorFlow needed) or, with
``--dataset folder``, as PNGs prepared once through tensorflow-datasets; then runs
:func:`dcgan_jax.train.train_and_evaluate` (input, metrics, logging, periodic checkpoints;
sample grids only with ``--sample_every``, no quality or FID hooks) for ``--short_steps`` and
``--long_steps`` (after an untimed warm-up run). Fixed costs (compilation, setup, the final checkpoint) cancel in the difference, so the
loop's steady-state rate is ``(long - short) · batch / (T_long - T_short)``; the loop's own log
windows after the first give it from one run. One more run of ``--long_steps`` with the other
checkpoint setting (``--background_checkpoints``: saves in a worker thread or in the loop) shows
what the worker gains (``--loop_only`` skips it, and the dispatch modes below).
Step-only img/s is the same config's :class:`DataParallelStep` on one device-resident batch.
With the array dataset it also times the loop's per-step work (gather, rng, step, metrics)
dispatched step by step and fused ``--fused_steps`` to a device program
(:mod:`dcgan_jax.step_loop`), to choose ``steps_per_dispatch``.
Target (issue 5): loop ≥ 90% of step-only.

Needs clu and ml_collections (small pure-Python wheels), plus TensorFlow, tensorflow-datasets and
Pillow for ``--dataset folder``; where they are missing it says so, writes a JSON record marked
skipped, and exits 0. Without TensorFlow the loop logs to metrics.jsonl instead of TensorBoard.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_train as common  # pylint: disable=g-import-not-at-top,wrong-import-position

from dcgan_jax.errors import UserError  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_MODULES = ('clu', 'ml_collections')
FOLDER_MODULES = ('tensorflow', 'tensorflow_datasets', 'PIL')


@contextlib.contextmanager
def timed_saves():
  """Records how long each checkpoint save held the loop up: the wall time of every periodic
  save (``train._checkpoint``, which with background checkpoints only dispatches a device copy
  and hands it to the worker) and final save (``train._save``) that the loop's own thread made.
  (Saves the worker makes do not hold the loop up, so they are not counted.)"""
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top
  originals = {name: getattr(train, name) for name in ('_checkpoint', '_save')}
  times, depth = [], [0]

  def timed(original):
    def wrapper(*args, **kwargs):
      if threading.current_thread() is not threading.main_thread():
        return original(*args, **kwargs)
      depth[0] += 1  # A periodic save in the loop calls _save inside _checkpoint: count once.
      t0 = time.perf_counter()
      try:
        return original(*args, **kwargs)
      finally:
        depth[0] -= 1
        if not depth[0]:
          times.append(time.perf_counter() - t0)
    return wrapper

  for name, original in originals.items():
    setattr(train, name, timed(original))
  try:
    yield times
  finally:
    for name, original in originals.items():
      setattr(train, name, original)


def missing_training_modules(dataset: str = 'array') -> list[str]:
  needed = TRAINING_MODULES + (FOLDER_MODULES if dataset == 'folder' else ())
  return [m for m in needed if importlib.util.find_spec(m) is None]


def smooth_random_images(num_images: int, image_size: int, seed: int = 0):
  """uint8 [N, size, size, 3]: upsampled 8x8 noise, one image at a time (bounded memory)."""
  rng = np.random.default_rng(seed)
  factor = max(image_size // 8, 1)
  for _ in range(num_images):
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    yield np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)


def write_image_array(path: str, num_images: int, image_size: int, seed: int = 0) -> None:
  """The same images as :func:`write_image_folder`, as one .npy file (dataset 'array')."""
  images = np.lib.format.open_memmap(path + '.tmp.npy', mode='w+', dtype=np.uint8,
                                     shape=(num_images, image_size, image_size, 3))
  for i, image in enumerate(smooth_random_images(num_images, image_size, seed)):
    images[i] = image
  images.flush()
  del images
  os.replace(path + '.tmp.npy', path)


def write_image_folder(path: str, num_images: int, image_size: int, seed: int = 0) -> None:
  """Writes smooth random RGB PNGs (upsampled 8x8 noise: realistic PNG sizes, fast to make)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  for i, image in enumerate(smooth_random_images(num_images, image_size, seed)):
    Image.fromarray(image).save(os.path.join(path, f'{i:06d}.png'))


def make_config(args, dataset_path: str, data_dir: str, num_steps: int):
  """configs/default.py with the benchmark's dataset, model and hooks."""
  from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(os.path.join(REPO, 'configs', 'default.py'))
  config.dataset = args.dataset
  config.dataset_path = dataset_path
  config.data_dir = data_dir
  config.image_size = args.image_size
  config.channels = 3
  config.generator_width = config.discriminator_width = args.width
  config.upsample = 'transpose'
  config.dtype = args.dtype
  config.batch_size = args.batch
  config.device_resident = args.device_resident
  if args.steps_per_dispatch:
    config.steps_per_dispatch = args.steps_per_dispatch
  config.num_train_steps = num_steps
  config.log_every_steps = args.log_every
  config.checkpoint_every_steps = args.checkpoint_every
  config.background_checkpoints = bool(args.background_checkpoints)
  config.sample_every_steps = args.sample_every
  config.quality_every_steps = 0
  config.eval_every_steps = 0
  return config


def in_run_windows(workdir: str, batch: int) -> dict[str, Any]:
  """The loop's own rate, from the ``img_per_sec`` it logged (one value per log window).

  The windows tile the run from the first log to the last (everything between two logs counts:
  steps, metrics, logging, periodic checkpoints), so the windows after the first, which holds
  compilation and set-up, give the steady-state rate of one run, free of the fixed costs that
  make the difference of two runs noisy.
  """
  from dcgan_jax import run_logs  # pylint: disable=g-import-not-at-top
  steps, img_per_sec = run_logs.read_scalars(workdir)['img_per_sec']
  lengths = np.diff(steps)  # Window i + 1 covers steps[i] .. steps[i + 1].
  seconds = lengths * batch / img_per_sec[1:]
  total = float(seconds.sum())
  return {'steps': int(lengths.sum()), 'seconds': total,
          'img_per_s': float(lengths.sum()) * batch / total if total > 0 else None,
          'windows': len(lengths), 'first_step': int(steps[0]) if len(steps) else None,
          'ms_per_step_by_window': (seconds / lengths * 1e3).tolist()}


def step_only(config, args) -> dict[str, Any]:
  """The loop's own step (same config, EMA included) on one device-resident batch."""
  from dcgan_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  step = parallel.DataParallelStep(models.generator_from_config(config),
                                   models.discriminator_from_config(config),
                                   train_step_lib.StepConfig.from_config(config))
  state = step.place_state(train.create_train_state(config, jax.random.key(0),
                                                    int(config.num_train_steps)))
  real = step.place_batch(np.random.default_rng(0).integers(
      0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8))
  run_steps, _ = common.step_runner(step, state, real)
  result = common.time_method(run_steps, args.long_steps - args.short_steps, args.repeats, 2)
  result['img_per_s'] = args.batch / result['ms_per_step'] * 1e3
  return result


def dispatch_modes(config, args, images_path: str,
                   on_result: Callable[[str, dict[str, Any]], None] = lambda mode, result: None
                   ) -> dict[str, dict[str, Any]]:
  """The loop's per-step work (batch gather, rng, step, metrics; no hooks) in each dispatch mode.

  ``per_step``: four dispatches per step from Python (the loop's path for streamed input and
  pmap). ``one_program``: the four in one program per step (``steps_per_dispatch=1`` with
  device-resident data, the default). ``fused``: :class:`dcgan_jax.step_loop.FusedSteps` chunks
  of ``--fused_steps`` (cut at epoch ends); ``fused[<name>]``: the same compiled with each
  ``--xla_variants`` option set (e.g. WHILE in XLA's CUDA-graph command buffers). All on the same device-resident images, same
  config, same run. ``on_result(mode, result)`` is called as each mode is measured.
  """
  images = np.load(images_path)
  results = {}
  for mode in ('per_step', 'one_program', 'fused'):
    results[mode] = _time_dispatch(config, args, images, mode, None)
    on_result(mode, results[mode])
  for name, options in args.xla_variants.items():
    mode = f'fused[{name}]'
    results[mode] = common.run_variant(
        name, lambda o=options: _time_dispatch(config, args, images, 'fused', o), 'img_per_s')
    on_result(mode, results[mode])
  return results


def _time_dispatch(config, args, images: np.ndarray, mode: str,
                   compiler_options: dict[str, Any] | None) -> dict[str, Any]:
  """Times one dispatch mode (see :func:`dispatch_modes`)."""
  from dcgan_jax import data, models, parallel, step_loop  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train_metrics  # pylint: disable=g-import-not-at-top
  step = parallel.DataParallelStep(models.generator_from_config(config),
                                   models.discriminator_from_config(config),
                                   train_step_lib.StepConfig.from_config(config),
                                   compiler_options=('auto' if compiler_options is None
                                                     else compiler_options))
  sampler = data.DeviceResidentSampler(images, args.batch, 0, mesh=step.mesh)
  key = jax.random.key(1)
  holder = {'state': step.place_state(train.create_train_state(
      config, jax.random.key(0), int(config.num_train_steps))), 'step': 0}
  names = list(jax.eval_shape(step.mapped, holder['state'], sampler.batch(0), key)[1])
  collection_cls = train_metrics.make_metrics_collection(names)
  accumulate = train_metrics.make_accumulate(collection_cls, False)
  fused = step_loop.FusedSteps(step, sampler, train_metrics.make_accumulate(
      collection_cls, False, jit=False), 1 if mode == 'one_program' else args.fused_steps)

  def run_steps(n: int) -> None:
    state, first = holder['state'], holder['step']
    collection = collection_cls.empty()
    tracker = train_metrics.NonFiniteTracker.empty()
    s = first
    while s < first + n:
      if mode != 'per_step':
        end = fused.chunk_end(s, first + n, lambda _: False)
        state, collection, tracker = fused(state, collection, tracker, key, s, end)
      else:
        state, metrics = step(state, sampler.batch(s), parallel.fold_in(key, s))
        collection, tracker = accumulate(collection, tracker, metrics, np.int32(s + 1))
        end = s + 1
      s = end
    jax.block_until_ready((state, collection, tracker))
    holder['state'], holder['step'] = state, s

  result = common.time_method(run_steps, args.long_steps - args.short_steps, args.repeats,
                              args.fused_steps if mode == 'fused' else 2)
  result['img_per_s'] = args.batch / result['ms_per_step'] * 1e3
  return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=20000)
  parser.add_argument('--dataset', default='array', choices=('array', 'folder'),
                      help="'array': one .npy read by numpy (no TensorFlow); 'folder': PNGs "
                      'prepared through tensorflow-datasets')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--short_steps', type=int, default=100)
  parser.add_argument('--long_steps', type=int, default=1100)
  parser.add_argument('--log_every', type=int, default=100)
  parser.add_argument('--checkpoint_every', type=int, default=500)
  parser.add_argument('--sample_every', type=int, default=0,
                      help='sample grid period in steps (0: none; CelebA config: 1000)')
  parser.add_argument('--loop_only', action='store_true',
                      help='only the loop runs and the step: no run with the other checkpoint '
                           'setting, no dispatch modes (e.g. for a --sample_every run)')
  parser.add_argument('--background_checkpoints', type=int, default=1, choices=(0, 1),
                      help='1: periodic checkpoints saved by a worker thread (the default '
                      'config); 0: saved in the loop. The other setting gets one more run, '
                      'for its in-run windows')
  parser.add_argument('--device_resident', default='auto', help="'auto', 'always' or 'never'")
  parser.add_argument('--steps_per_dispatch', type=int, default=0,
                      help='steps per device program with device-resident data (1: one dispatch '
                           "per step); 0 keeps configs/default.py's value")
  parser.add_argument('--repeats', type=int, default=3, help='repeats of the step-only timing')
  parser.add_argument('--fused_steps', type=int, default=100,
                      help='chunk length of the fused-dispatch row (array dataset only)')
  parser.add_argument('--xla_variants', default='',
                      help='JSON {name: {xla_option: value}}: also time the fused chunks compiled '
                           'with each set of XLA options, e.g. \'{"while_graphs": '
                           '{"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,'
                           'CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"}}\'')
  parser.add_argument('--workdir', default='', help='where data and runs go (default: a temp dir)')
  parser.add_argument('--out', default='')
  parser.add_argument('--device_kind', default='')
  parser.add_argument('--tiny', action='store_true',
                      help='CPU smoke run: 64 images of 16x16, width 8, batch 16, 2 vs 12 steps')
  if '--tiny' in (sys.argv[1:] if argv is None else argv):
    parser.set_defaults(num_images=64, image_size=16, width=8, batch=16, dtype='float32',
                        short_steps=2, long_steps=12, log_every=2, checkpoint_every=4, repeats=2,
                        fused_steps=4)
  args = parser.parse_args(argv)
  args.xla_variants = common.parse_xla_variants(args.xla_variants)
  if args.long_steps <= args.short_steps or args.short_steps < 1:
    raise UserError('long_steps must exceed short_steps, and short_steps must be positive.')
  if args.num_images < args.batch:
    raise UserError(f'num_images must be at least the batch ({args.batch}).')
  return args


def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
  from dcgan_jax import data, train  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  if args.dataset == 'folder':
    folder = os.path.join(root, 'images')
    if not os.path.isdir(folder):
      write_image_folder(folder, args.num_images, args.image_size)
  else:
    folder = os.path.join(root, f'images_{args.num_images}_{args.image_size}.npy')
    if not os.path.isfile(folder):
      write_image_array(folder, args.num_images, args.image_size)
  write_s = time.perf_counter() - t0
  data_dir = os.path.join(root, 'tfds')
  t0 = time.perf_counter()
  info = data.dataset_info(make_config(args, folder, data_dir, args.short_steps))  # Prepares.
  prepare_s = time.perf_counter() - t0
  # The loop imports clu (and TensorFlow, where installed) lazily; load them now so the first
  # timed run does not pay for it alone (the difference below assumes equal fixed costs).
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top,unused-import
  from dcgan_jax import writers  # pylint: disable=g-import-not-at-top
  if writers.have_tensorflow():
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top,unused-import
  # The first run in a process also pays one-time costs (lazy imports in checkpointing and
  # tf.data, first-use initialisation: ~40 s of a 50 s tiny run on CPU), so an untimed run of
  # short_steps goes first.
  wall, saves = {}, {}
  for i, steps in enumerate((args.short_steps, args.short_steps, args.long_steps)):
    config = make_config(args, folder, data_dir, steps)
    workdir = os.path.join(root, f'run_{i}_{steps}')
    with timed_saves() as save_times:
      t0 = time.perf_counter()
      state = train.train_and_evaluate(config, workdir)
      if i > 0:
        wall[steps] = time.perf_counter() - t0
        saves[steps] = list(save_times)
    if int(np.asarray(state.step)) != steps:
      raise RuntimeError(f'the loop stopped at step {state.step}, not {steps}')
  extra = args.long_steps - args.short_steps
  delta = wall[args.long_steps] - wall[args.short_steps]
  # What the periodic checkpoints cost the loop: the time the loop spent blocked in them
  # (copying the state off the devices, orbax's synchronous part) beyond the short run's. Every
  # run ends with a forced save (the last one timed), which is a fixed cost: it counts in
  # `checkpoint_s`, which comes off `delta`, but not in the periodic cost, which two final saves
  # of different lengths would otherwise make noisy (even negative, in a tiny run).
  checkpoint_s = sum(saves[args.long_steps]) - sum(saves[args.short_steps])
  periodic_s = sum(saves[args.long_steps][:-1]) - sum(saves[args.short_steps][:-1])
  # On a noisy machine the fixed costs can vary by more than the extra steps take.
  loop_ips = extra * args.batch / delta if delta > 0 else float('nan')
  windows = in_run_windows(os.path.join(root, f'run_2_{args.long_steps}'), args.batch)
  # One more run with the other checkpoint setting (worker thread vs in the loop), for what
  # background saves gain in the same process, on the same images.
  other = None
  if not args.loop_only:
    other_config = make_config(args, folder, data_dir, args.long_steps)
    other_config.background_checkpoints = not args.background_checkpoints
    other_dir = os.path.join(root, f'run_3_{args.long_steps}_other_saves')
    with timed_saves() as other_saves:
      train.train_and_evaluate(other_config, other_dir)
    other = {'background_checkpoints': bool(other_config.background_checkpoints),
             'in_run_windows': in_run_windows(other_dir, args.batch),
             'checkpoint_saves_s': list(other_saves)}
  step = step_only(make_config(args, folder, data_dir, args.long_steps), args)
  rows = []

  def add(method: str, img_per_s: float, ms_per_step: float) -> None:
    rows.append({'method': method, 'img_per_s': img_per_s, 'ms_per_step': ms_per_step,
                 'vs_step': img_per_s / step['img_per_s']})
    common.report_progress(args, 'train_loop', rows)

  # The headline rows first: a time limit that ends the dispatch modes below leaves them.
  headline = [('loop (in-run windows)', windows)]
  if other is not None:
    other['loop_vs_step_in_run'] = (other['in_run_windows']['img_per_s'] / step['img_per_s']
                                    if other['in_run_windows']['img_per_s'] else None)
    headline.append(('loop (in-run windows, saves in a worker)'
                     if other['background_checkpoints']
                     else 'loop (in-run windows, saves in the loop)', other['in_run_windows']))
  for label, result in headline:
    if result['img_per_s']:
      add(label, result['img_per_s'], args.batch / result['img_per_s'] * 1e3)
  add('loop (steady state)', loop_ips, args.batch / loop_ips * 1e3)
  add('loop (end to end)', args.long_steps * args.batch / wall[args.long_steps],
      wall[args.long_steps] / args.long_steps * 1e3)
  add('step only', step['img_per_s'], step['ms_per_step'])

  def add_mode(mode: str, result: dict[str, Any]) -> None:
    label = {'per_step': 'steps, 4 dispatches per step',
             'one_program': 'steps, 1 per dispatch (default)'}.get(
                 mode, f'steps, {args.fused_steps} per dispatch{mode[len("fused"):]}')
    add(label, result['img_per_s'], result['ms_per_step'])

  modes = {}
  if args.dataset == 'array' and not args.loop_only:
    modes = dispatch_modes(make_config(args, folder, data_dir, args.long_steps), args, folder,
                           add_mode)
  table = common.print_table(rows, [('method', 'method', 's'), ('ms_per_step', 'ms/step', '.3f'),
                                    ('img_per_s', 'img/s', '.1f'), ('vs_step', 'x step', '.3f')])
  env = common.environment(args.device_kind or None)
  return {
      'benchmark': 'train_loop',
      'skipped': False,
      'environment': env,
      'settings': {**{k: v for k, v in vars(args).items() if k not in ('out', 'workdir')},
                   'steps_per_dispatch': int(config.steps_per_dispatch)},
      'dataset': {'kind': args.dataset, 'num_examples': info.num_examples, 'write_s': write_s,
                  'prepare_s': prepare_s},
      'loop_wall_s': {str(k): v for k, v in wall.items()},
      'checkpoint_saves_s': {str(k): v for k, v in saves.items()},
      'periodic_checkpoint_ms_per_step': periodic_s / extra * 1e3,
      'loop_vs_step_without_periodic_checkpoints': (
          extra * args.batch / (delta - checkpoint_s) / step['img_per_s']
          if delta > checkpoint_s else None),
      'rows': rows,
      'in_run_windows': windows,
      'other_saves': other,
      'loop_vs_step_in_run': (windows['img_per_s'] / step['img_per_s']
                              if windows['img_per_s'] else None),
      'loop_vs_step': loop_ips / step['img_per_s'] if delta > 0 else None,
      'step_only': step,
      'dispatch_modes': modes,
      'target_loop_vs_step': 0.9,
      'targets_apply': not args.tiny and 'H100' in env['device_kind'],
      'table': table,
  }


def run_or_skip(args: argparse.Namespace) -> dict[str, Any]:
  """:func:`run` in ``--workdir`` or a temporary folder, or a 'skipped' record where the
  training loop's modules are missing."""
  missing = missing_training_modules(args.dataset)
  if missing:
    message = (f'benchmark_loop skipped: the training loop needs {", ".join(missing)}, '
               'which is not installed here.')
    print(message, flush=True)
    return {'benchmark': 'train_loop', 'skipped': True, 'reason': message,
            'environment': common.environment(args.device_kind or None)}
  if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
    return run(args, args.workdir)
  with tempfile.TemporaryDirectory() as root:
    return run(args, root)


def main(argv: list[str] | None = None) -> int:
  return common.benchmark_main(parse_args, run_or_skip, argv)


if __name__ == '__main__':
  sys.exit(main())
