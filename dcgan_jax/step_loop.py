"""Several training steps in one device program, so the host dispatches once per chunk.

With the dataset on the devices (:class:`~dcgan_jax.data.DeviceResidentSampler`) and
``parallelism='shard_map'``, everything one step needs is a function of device values and the step
number: its batch (a gather from the epoch's permutation), its rng (``fold_in(train_key, step)``),
the update, and the metric accumulation. :class:`FusedSteps` traces all four into one program:
with ``steps_per_dispatch`` 1 (the default) that program is one step, so the host dispatches
once per step instead of four times (gather, fold_in, step, accumulate: where a step takes a
millisecond or two on the accelerator, that host work can hold the loop below the step's own
rate); with more, it is the body of a ``lax.fori_loop`` that runs up to ``steps_per_dispatch``
steps per call. The loop is opt-in because its gain depends on the backend. On an H200
(paper-sized bfloat16 step, batch 128) the chunks alone ran 2.05 ms/step at 100 steps per
dispatch against 2.21 at one, but whole-loop runs did not settle it (experiments/PERF.md).

On XLA:CPU the loop is a trap: the looped step runs many times slower than the lone one (the
digits config of configs/default.py, 2 cores: ~1 s against 30-50 ms per step, 20-30x, on jax
0.10-0.12; a 16x16 width-8 model only 1.5-3.5x, which is all earlier measurements saw). Not a
recompilation (one program serves every chunk) and not copies of the carry: XLA:CPU's pass that
rewrites convolutions into the layout its fast (Eigen) kernels take, ``ConvCanonicalization``,
visits only the entry computation, so convolutions inside a while loop's body keep the dimension
numbers autodiff gave them (``f01b_i01o->01bf`` for kernel gradients, ``b01f_01oi->b01f`` for
input gradients) and are emitted as XLA's naive loop nest. The lone step's program has no loop,
so all its convolutions get the fast path. The H200 numbers above show no such cost on a
GPU. :data:`CPU_LOOP_WARNING` says so in a run; tests/test_step_loop.py checks the
compiled programs. The one-step program costs the same as four dispatches on CPU (2 cores,
tiny model: ~2.2 ms/step either way, within noise).

Chunks end wherever the host has work: at every step where a log, checkpoint or hook is due, at
each epoch's end (the permutation changes) and at the end of training. They also end at multiples
of ``steps_per_dispatch`` counted from step 0, so a resumed run cuts the same chunks as an
uninterrupted one. The steps are those of step-by-step dispatch: the same batches, rngs, updates
and metrics (tests/test_step_loop.py). Floats agree to rounding, not bit for bit, since XLA may
fuse the loop body a little differently from the lone step; a run resumed from a checkpoint is bit
for bit the uninterrupted one, because both run the same program (the trip count is an argument).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from dcgan_jax import parallel
from dcgan_jax.errors import UserError

# Logged (with steps_per_dispatch) when a run fuses steps on CPU devices; see the module's doc.
CPU_LOOP_WARNING = (
    'steps_per_dispatch=%d on CPU: XLA:CPU gives its fast convolution kernels only to '
    'convolutions outside loops, so each step inside the fused loop runs many times slower than '
    'a lone step (~1 s against 30-50 ms per step for configs/default.py on 2 cores). Use '
    'steps_per_dispatch=1 on CPU; fusing steps is meant for accelerators (measure it there).')

# (collection, tracker, metrics, step_done) -> (collection, tracker): traceable, no host sync.
Accumulate = Callable[[Any, Any, dict[str, jax.Array], jax.Array], tuple[Any, Any]]


def check_steps_per_dispatch(value: Any) -> int:
  """The config's ``steps_per_dispatch`` as a positive int, or a UserError saying what is valid."""
  try:
    steps = int(value)
  except (TypeError, ValueError):
    steps = 0
  if steps < 1 or steps != value:
    raise UserError(f'steps_per_dispatch must be a positive integer (got {value!r}); '
                    '1 dispatches every step from Python.')
  return steps


def chunk_end(step: int, limit: int, steps_per_epoch: int, steps_per_dispatch: int,
              is_boundary: Callable[[int], bool]) -> int:
  """Where the chunk that starts after ``step`` steps ends (the step count after it).

  Args:
    step: steps done so far.
    limit: the end of training.
    steps_per_epoch: whole batches per epoch (the data order changes at multiples of it).
    steps_per_dispatch: the longest chunk; chunks also end at its multiples.
    is_boundary: whether the host has work after a given step count (log, checkpoint, hook).

  Returns:
    The first of: a step count where ``is_boundary`` holds, the end of ``step``'s epoch, the
    next multiple of ``steps_per_dispatch``, or ``limit``; always greater than ``step``.
  """
  epoch_end = (step // steps_per_epoch + 1) * steps_per_epoch
  end = min(limit, epoch_end, (step // steps_per_dispatch + 1) * steps_per_dispatch)
  for done in range(step + 1, end):
    if is_boundary(done):
      return done
  return end


class FusedSteps:
  """Runs chunks of training steps on device-resident data inside one jitted loop.

  Example::

    fused = FusedSteps(step_fn, sampler, accumulate, steps_per_dispatch=100)
    end = fused.chunk_end(step, num_train_steps, is_boundary)
    state, collection, tracker = fused(state, collection, tracker, train_key, step, end)

  Attributes:
    steps_per_dispatch: The longest chunk.
  """

  def __init__(self, step_fn, sampler, accumulate: Accumulate, steps_per_dispatch: int):
    """Builds the chunk program (compiled on its first call; one program serves every length).

    Args:
      step_fn: a :class:`~dcgan_jax.parallel.DataParallelStep` with ``parallelism='shard_map'``.
      sampler: the :class:`~dcgan_jax.data.DeviceResidentSampler` on ``step_fn``'s mesh.
      accumulate: traceable metric accumulation, called with the step number just completed.
      steps_per_dispatch: the longest chunk (>= 1).
    """
    if step_fn.mapped is None:
      raise ValueError("FusedSteps needs parallelism='shard_map' (pmap steps are per-step only).")
    self.steps_per_dispatch = steps_per_dispatch = int(steps_per_dispatch)
    self._sampler = sampler
    self._replicated = step_fn.replicated_sharding
    self._mesh = step_fn.mesh
    mapped = step_fn.mapped
    batch_size = sampler.global_batch

    def run(state, collection, tracker, data, permutation, train_key, first_step, first_row,
            num_steps):
      def body(i, carry):
        state, collection, tracker = carry
        step = first_step + i
        batch = sampler.rows(data, permutation, first_row + i * batch_size)
        state, metrics = mapped(state, batch, jax.random.fold_in(train_key, step))
        collection, tracker = accumulate(collection, tracker, metrics, step + 1)
        return state, collection, tracker

      # (Not self.steps_per_dispatch: a closure over self would make self -> jit -> run -> self
      # a cycle, so the device-resident data would outlive the run until Python's cyclic
      # collector ran: several finished runs' datasets on the device in a sweep.)
      if steps_per_dispatch == 1:  # Every chunk is one step: no loop around it.
        del num_steps
        return body(0, (state, collection, tracker))
      # A traced trip count: one compilation serves every chunk length.
      return jax.lax.fori_loop(0, num_steps, body, (state, collection, tracker))

    self._run = jax.jit(run, donate_argnums=(0, 1, 2),
                        compiler_options=step_fn.compiler_options or None)

  def _placed(self, tree: Any) -> Any:
    """``tree`` replicated on the mesh. A tree the loop returned is there already, leaf by leaf,
    so one leaf tells; checking all of them cost ~30 us per step on the 2-core CPU."""
    leaves = jax.tree.leaves(tree)
    if leaves and isinstance(leaves[0], jax.Array) and leaves[0].sharding == self._replicated:
      return tree
    return jax.tree.map(self._place, tree)

  def _place(self, x: jax.Array) -> jax.Array:
    if isinstance(x, jax.Array) and x.sharding == self._replicated:
      return x  # Already where the loop left it (in multi-process runs, not fully addressable).
    return parallel.replicate(x, self._mesh)

  def chunk_end(self, step: int, limit: int, is_boundary: Callable[[int], bool]) -> int:
    """:func:`chunk_end` with this loop's epoch length and ``steps_per_dispatch``."""
    return chunk_end(step, limit, self._sampler.steps_per_epoch, self.steps_per_dispatch,
                     is_boundary)

  def __call__(self, state, collection, tracker, train_key: jax.Array, step: int, end: int):
    """Runs steps ``step .. end - 1`` (one epoch at most); returns the updated carry.

    ``state``, ``collection`` and ``tracker`` are donated.
    """
    return self._run(*self._arguments(state, collection, tracker, train_key, step, end))

  def compiled_text(self, state, collection, tracker, train_key: jax.Array, step: int,
                    end: int) -> str:
    """The optimized HLO of the program :meth:`__call__` runs for these arguments (nothing is
    donated or run; after a call with the same shapes, jax's cache answers without compiling)."""
    arguments = self._arguments(state, collection, tracker, train_key, step, end)
    return self._run.lower(*arguments).compile().as_text()

  def _arguments(self, state, collection, tracker, train_key, step, end) -> tuple[Any, ...]:
    epoch, position = divmod(step, self._sampler.steps_per_epoch)
    if not step < end <= (epoch + 1) * self._sampler.steps_per_epoch:
      raise ValueError(f'A chunk runs within one epoch: got steps {step}..{end}.')
    # Fresh metric accumulators are uncommitted host-made arrays; the loop returns them
    # replicated on the mesh. Placing them the same way every call keeps one compiled program.
    collection, tracker = self._placed(collection), self._placed(tracker)
    return (state, collection, tracker, self._sampler.data,
            self._sampler.epoch_permutation(epoch), train_key, np.int32(step),
            np.int32(position * self._sampler.global_batch), np.int32(end - step))
