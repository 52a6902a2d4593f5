"""A window of training steps traced with ``jax.profiler``, for seeing where a run's time goes.

With ``config.profile_steps = N > 0`` the training loop traces N steps, starting after
``profile_skip_steps`` steps of the process (so compilation, autotuning and the first, slower
steps stay out of the trace), into ``<workdir>/profile``: XProf (TensorBoard's profile plugin)
reads it there, and ``perfetto_trace.json.gz`` opens in https://ui.perfetto.dev. Each dispatch
is marked with a ``train`` step annotation, so the profiler's step view lines up with training
steps.

The trace starts and stops with the device idle (the state is waited for at both ends), so it
holds exactly the traced steps' device work, and the log reports their wall time with the
profiler on. jax.profiler needs no TensorFlow.

Reading a trace back: :func:`summarise_trace` sums the device time per kernel and per XLA
operation (named by JAX source when given the program's optimized HLO), and

  python -m dcgan_jax.profiling --workdir=<workdir> [--hlo=step.hlo.txt] [--json_out=s.json]

prints that report for a run's newest trace.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import os
import re
import time
from typing import Any, Callable

from absl import logging
import jax

from dcgan_jax import command_line
from dcgan_jax.errors import UserError
from dcgan_jax.errors import exit_with_user_error

PROFILE_DIR = 'profile'
_ANNOTATION = 'train'
PERFETTO_TRACE = 'perfetto_trace.json.gz'
HLO_FILE = 'train_program.hlo.txt'  # The traced program's optimized HLO, beside the trace.
# Rows of a device that summarise others (TPU traces): counted only where a device has no other.
_SUMMARY_ROWS = ('XLA Ops', 'XLA Modules', 'Steps')


def check_profile_config(config: Any) -> tuple[int, int]:
  """The config's (profile_steps, profile_skip_steps), or a UserError saying what is valid."""
  values = []
  for name, default in (('profile_steps', 0), ('profile_skip_steps', 10)):
    value = config.get(name, default)
    try:
      number = int(value)
    except (TypeError, ValueError):
      number = -1
    if number < 0 or number != value or isinstance(value, bool):
      raise UserError(f'{name} must be an integer >= 0 (got {value!r}); profile_steps=0 turns '
                      'profiling off.')
    values.append(number)
  return values[0], values[1]


class StepProfiler:
  """Starts and stops ``jax.profiler`` around a window of training steps.

  The loop calls :meth:`before_dispatch` and :meth:`after_dispatch` around every dispatch (one
  step, or a chunk of fused steps), lets :meth:`is_boundary` end fused chunks at the window's
  edges, and :meth:`close` at the end (also when training fails), which stops a trace still on.
  """

  def __init__(self, logdir: str, num_steps: int, skip_steps: int, start_step: int,
               num_train_steps: int):
    self.logdir = logdir
    self.num_steps = num_steps
    self.first = start_step + skip_steps  # Steps done when the trace starts.
    self.last = min(self.first + num_steps, num_train_steps)  # ... and when it stops.
    self._started_at = None
    self._start_time = 0.0
    self._done = num_steps == 0

  @classmethod
  def from_config(cls, config: Any, workdir: str, start_step: int,
                  num_train_steps: int) -> StepProfiler:
    num_steps, skip_steps = check_profile_config(config)
    logdir = os.path.join(workdir, PROFILE_DIR)
    if jax.process_count() > 1:  # Each process traces itself; perfetto file names would clash.
      logdir = os.path.join(logdir, f'process_{jax.process_index()}')
    return cls(logdir, num_steps, skip_steps, start_step, num_train_steps)

  @property
  def active(self) -> bool:
    return self._started_at is not None

  def is_boundary(self, done: int) -> bool:
    """Whether a fused chunk must end after ``done`` steps (a window edge)."""
    return not self._done and done in (self.first, self.last)

  def before_dispatch(self, step: int, state: Any,
                      compiled_text: Callable[[], str] | None = None) -> None:
    """Starts the trace when ``step`` steps are done and the window begins here.

    Args:
      step: steps done before this dispatch.
      state: the state the dispatch reads (waited for before the trace starts).
      compiled_text: returns the optimized HLO of the program about to run; written next to
        the trace (``HLO_FILE``) so that the report names operations by JAX source.
    """
    if self._done or self.active or step < self.first or step >= self.last:
      return
    os.makedirs(self.logdir, exist_ok=True)
    if compiled_text is not None:
      self._write_hlo(compiled_text)
    jax.block_until_ready(state)  # Earlier steps' device work stays out of the trace.
    try:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
    except RuntimeError as e:  # One trace per process: the caller's own is already running.
      self._done = True
      logging.warning('profile_steps=%d skipped: jax.profiler could not start (%s); is another '
                      'trace running in this process?', self.num_steps, e)
      return
    self._started_at = step
    self._start_time = time.monotonic()

  def _write_hlo(self, compiled_text: Callable[[], str]) -> None:
    try:
      text = compiled_text()
    except Exception as e:  # pylint: disable=broad-except  # Optional; never stops training.
      logging.warning('Profiling: could not get the step program\'s HLO (%s: %s); operations '
                      'keep their HLO names.', type(e).__name__, e)
      return
    with open(os.path.join(self.logdir, HLO_FILE), 'w', encoding='utf-8') as f:
      f.write(text)

  def annotate(self, step: int, num_steps: int = 1):
    """A step annotation for the dispatch of ``num_steps`` steps after ``step`` while tracing."""
    if not self.active:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation(_ANNOTATION, step_num=step, steps=num_steps)

  def after_dispatch(self, done: int, state: Any) -> None:
    """Stops the trace once the window's last step is done."""
    if self.active and done >= self.last:
      self._stop(done, state)

  def close(self, done: int) -> None:
    """Stops a trace still on (training failed inside the window); says if none was taken.

    The state is not waited for: after a failure its buffers may be gone (donated).
    """
    if self.active:
      self._stop(done, None)
    elif not self._done:
      self._done = True
      logging.warning('profile_steps=%d: no steps were profiled, because the run ended after '
                      '%d steps, before the window (after profile_skip_steps) began.',
                      self.num_steps, done)

  def _stop(self, done: int, state: Any) -> None:
    if state is not None:
      jax.block_until_ready(state)  # The traced steps' device work ends inside the trace.
    seconds = time.monotonic() - self._start_time
    jax.profiler.stop_trace()
    steps = done - self._started_at
    logging.info('Profiled steps %d to %d (%.2f ms per step with the profiler on) into %s; '
                 'open it with XProf (TensorBoard\'s profile plugin), or its '
                 'perfetto_trace.json.gz in https://ui.perfetto.dev.', self._started_at + 1, done,
                 1e3 * seconds / max(steps, 1), self.logdir)
    self._started_at = None
    self._done = True


# --- Reading a trace back ------------------------------------------------------------------------

_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*?'
                              r'op_name="([^"]*)"')


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Maps each instruction of an optimized HLO module (``compiled.as_text()``) to the JAX
  operation it came from (its ``op_name`` metadata, without the leading ``jit(...)/``)."""
  names = {}
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if match:
      op_name = match.group(2)
      names[match.group(1)] = op_name.split('/', 1)[-1] if op_name.startswith('jit(') else op_name
  return names


def find_trace(path: str) -> str:
  """The newest perfetto trace under ``path`` (a workdir, its profile folder or a trace file)."""
  if os.path.isfile(path):
    return path
  paths = glob.glob(os.path.join(path, '**', PERFETTO_TRACE), recursive=True)
  if not paths:
    raise UserError(f'No {PERFETTO_TRACE} under {path}; train with --config.profile_steps=N '
                    '(N > 0) to write one into <workdir>/profile.')
  return max(paths, key=lambda p: (os.path.getmtime(p), p))


def _hlo_beside(path: str, trace_path: str) -> str | None:
  """The HLO the training loop wrote for a trace: in the folder searched or one above the trace."""
  folders = [path] if os.path.isdir(path) else []
  folders += [os.path.join(path, PROFILE_DIR)] if os.path.isdir(path) else []
  # <logdir>/plugins/profile/<run>/perfetto_trace.json.gz: the logdir is three levels up.
  folders.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(trace_path)))))
  for folder in folders:
    candidate = os.path.join(folder, HLO_FILE)
    if os.path.isfile(candidate):
      with open(candidate, encoding='utf-8') as f:
        return f.read()
  return None


def _union_ms(intervals: list[tuple[float, float]]) -> float:
  """Total length (µs in the trace, returned as ms) covered by possibly overlapping spans."""
  total, end = 0.0, float('-inf')
  for start, stop in sorted(intervals):
    if stop <= end:
      continue
    total += stop - max(start, end)
    end = stop
  return total / 1e3


def summarise_trace(path: str, steps: int | None = None, top: int = 25,
                    hlo_text: str | None = None) -> dict[str, Any]:
  """Device time per kernel and per JAX operation in a ``jax.profiler`` perfetto trace.

  Device work is what a GPU or TPU process of the trace ran (its stream rows: kernels, copies,
  memsets); on a CPU-only trace it is the XLA operations the host threads ran. Each event names
  its HLO instruction (``hlo_op``); with the program's optimized HLO (``hlo_text``) that becomes
  the JAX operation it came from, e.g. ``transpose(jvp(Discriminator))/Conv_1/...``.

  Args:
    path: a trace file, or a folder searched for the newest one (a workdir, ``<workdir>/profile``).
    steps: steps the trace holds; by default counted from the training loop's ``train``
      annotations (1 when there are none).
    top: rows kept in each table.
    hlo_text: the traced program's optimized HLO, for naming operations; by default the
      ``HLO_FILE`` the training loop wrote beside the trace, if any.

  Returns:
    A dict: ``trace`` (its path), ``steps``, ``kernels_per_step``, ``kernel_ms_per_step``
    (summed), ``busy_ms_per_step`` (time with any device work running), ``wall_ms_per_step``
    (from the first annotated dispatch to the end of the last device work; None without
    annotations), ``top_kernels`` and ``top_ops`` (rows of name, count_per_step and
    ms_per_step), the ``device_processes`` and ``device_threads`` read, and ``event_args``
    (argument names seen on device events, for traces whose format differs).
  """
  trace_path = find_trace(path)
  if hlo_text is None:
    hlo_text = _hlo_beside(path, trace_path)
  try:
    with gzip.open(trace_path, 'rt', encoding='utf-8') as f:
      data = json.load(f)
    events = data['traceEvents'] if isinstance(data, dict) else data
    if not isinstance(events, list):
      raise TypeError('no list of events')
  except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'{trace_path} is not a readable perfetto trace (gzipped JSON with '
                    f'traceEvents): {e}') from e
  process, thread = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      process[e['pid']] = e['args']['name']
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      thread[e['pid'], e.get('tid')] = e['args']['name']
  complete = [e for e in events if e.get('ph') == 'X']
  annotations = [e for e in complete if e.get('name') == _ANNOTATION and
                 'step_num' in e.get('args', {})]
  if steps is None:
    steps = sum(int(e['args'].get('steps', 1)) for e in annotations) or 1
  device_pids = {p for p, n in process.items() if 'GPU' in n or 'TPU' in n}
  if device_pids:
    device = [e for e in complete if e.get('pid') in device_pids]
    rows = {thread.get((e['pid'], e.get('tid')), '') for e in device}
    detailed = {r for r in rows if not any(s in r for s in _SUMMARY_ROWS)}
    keep = detailed or rows
    device = [e for e in device if thread.get((e['pid'], e.get('tid')), '') in keep]
  else:  # CPU: XLA runs each operation on host threads and names it.
    device = [e for e in complete if 'hlo_op' in e.get('args', {})]
  names = hlo_op_names(hlo_text) if hlo_text else {}
  kernels = collections.defaultdict(lambda: [0, 0.0])
  ops = collections.defaultdict(lambda: [0, 0.0])
  spans, threads_seen, arg_keys = [], collections.Counter(), collections.Counter()
  for e in device:
    args = e.get('args', {})
    arg_keys.update(args.keys())  # count key names; update(dict) would add its values
    threads_seen[thread.get((e['pid'], e.get('tid')), '')] += 1
    dur = float(e.get('dur', 0.0))
    kernels[e['name']][0] += 1
    kernels[e['name']][1] += dur
    spans.append((float(e['ts']), float(e['ts']) + dur))
    op = args.get('hlo_op')
    source = names.get(op) if op else None
    source = source or args.get('tf_op') or args.get('name') or op
    if source:
      source = source.split('/', 1)[-1] if source.startswith('jit(') else source
      ops[source][0] += 1
      ops[source][1] += dur

  wall_ms = None
  if annotations:  # From the first dispatch to the end of the last device work it started.
    ends = [float(e['ts']) + float(e.get('dur', 0.0)) for e in annotations]
    first = min(float(e['ts']) for e in annotations)
    last = max(ends + [stop for _, stop in spans])
    wall_ms = (last - first) / 1e3 / steps

  def table(d):
    ranked = sorted(d.items(), key=lambda kv: -kv[1][1])[:top]
    return [{'name': k[:160], 'count_per_step': c / steps, 'ms_per_step': t / 1e3 / steps}
            for k, (c, t) in ranked]

  return {
      'trace': trace_path,
      'steps': steps,
      'device_processes': sorted(process[p] for p in device_pids) or ['host (CPU)'],
      'device_threads': dict(threads_seen.most_common(12)),
      'event_args': sorted(arg_keys),
      'kernels_per_step': sum(c for c, _ in kernels.values()) / steps,
      'kernel_ms_per_step': sum(t for _, t in kernels.values()) / 1e3 / steps,
      'busy_ms_per_step': _union_ms(spans) / steps,
      'wall_ms_per_step': wall_ms,
      'top_kernels': table(kernels),
      'top_ops': table(ops),
  }


def format_summary(summary: dict[str, Any], rows: int = 20) -> str:
  """The summary of :func:`summarise_trace` as a plain-text report."""
  wall = summary.get('wall_ms_per_step')
  lines = [f"{summary['trace']}",
           f"{summary['steps']} steps on {', '.join(summary['device_processes'])}: "
           f"{summary['kernels_per_step']:.0f} kernels/step, device busy "
           f"{summary['busy_ms_per_step']:.3f} ms/step"
           + (f', wall {wall:.3f} ms/step' if wall is not None else '')]
  for key, title in (('top_kernels', 'kernels'), ('top_ops', 'operations')):
    lines.append(f'-- top {title} (ms/step, count/step)')
    lines += [f"{row['ms_per_step']:9.4f} {row['count_per_step']:7.1f}  {row['name']}"
              for row in summary[key][:rows]]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  """``python -m dcgan_jax.profiling --workdir=W``: the report of W's newest training trace."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  flags.DEFINE_string('workdir', '', 'A run trained with profile_steps > 0, or a trace folder '
                      'or perfetto_trace.json.gz.', flag_values=flag_values)
  flags.DEFINE_integer('rows', 20, 'Rows of each table.', lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_string('hlo', '', "Optional: the traced program's optimized HLO text, to name "
                      'operations by JAX source.', flag_values=flag_values)
  flags.DEFINE_string('json_out', '', 'Optional: also write the summary as JSON here.',
                      flag_values=flag_values)

  fail = exit_with_user_error
  f = command_line.parse_workdir_flags(flag_values, argv, usage=__doc__)
  try:
    hlo_text = None
    if f.hlo:
      try:
        with open(f.hlo, encoding='utf-8') as hlo_file:
          hlo_text = hlo_file.read()
      except OSError as e:
        raise UserError(f'Cannot read --hlo {f.hlo}: {e.strerror}.') from e
    summary = summarise_trace(f.workdir, top=max(f.rows, 25), hlo_text=hlo_text)
  except UserError as e:
    fail(str(e))
  if f.json_out:  # Checked before printing: a mistake is one line, not a table and a traceback.
    folder = os.path.dirname(os.path.abspath(f.json_out))
    if os.path.isdir(f.json_out) or not os.path.isdir(folder):
      fail(f'--json_out {f.json_out}: ' + ('a folder; name a file in it, e.g. '
                                           f'{os.path.join(f.json_out, "profile.json")}.'
                                           if os.path.isdir(f.json_out) else
                                           f'the folder {folder} does not exist.'))
  print(format_summary(summary, f.rows))
  if f.json_out:
    try:
      with open(f.json_out, 'w', encoding='utf-8') as out:
        json.dump(summary, out, indent=1)
    except OSError as e:
      fail(f'Cannot write --json_out {f.json_out}: {e.strerror}.')


if __name__ == '__main__':
  main()
