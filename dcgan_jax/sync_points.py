"""Where the processes of a multi-process run meet, such that a failure on one ends them all.

The training program's processes meet at a few points: after the checks, once process 0 has set
earlier outputs aside, before the first step, before each checkpoint, around each round of
sample grids and scores, at the end. Between two points some work is done by process 0 alone
(files, sample grids, the digits score) or can fail on one process only (its share of the data).
A process that failed there left the others waiting at the next point: for the barrier's hour,
while it waited for them in JAX's shutdown barrier at exit (five minutes, then every process
crashed with a page of C++ logs).

So a point is a small exchange in the key-value store of JAX's coordination service, the way
jax's and orbax's checkpointing agree on a save: every process posts a record under the point's
number and reads everyone's. A process that fails posts its error instead
(:func:`report_failure`), under the number of the point it would have reached next; the others
stop there at once with :class:`ProcessFailed`, whose one line names that process and its error,
and every process then passes the shutdown barrier together. The record also carries a value, so
that process 0's reading of a file decides for all (:func:`agree`) without a device collective,
which would wait for a failed process for as long.

Not covered: a process that fails while the others are inside a device collective (a training
step's gradient sum, the FID's gather) rather than at a point; they wait there until JAX's
shutdown barrier times out (``shutdown_timeout_seconds`` of ``jax.distributed.initialize``).
Work done by process 0 alone therefore comes right before a point, not before a collective.
"""
from __future__ import annotations

import json
import time
from typing import Any

import jax

from dcgan_jax import write_errors
from dcgan_jax.errors import UserError

_PREFIX = 'dcgan_jax/sync_points'
# As long as the barrier the points replaced: process 0 alone may spend long between two points
# (preparing the data, training the digits classifier, writing grids and scores).
TIMEOUT_SECONDS = 3600

# The points this process has entered (or failed before): every process enters the same points
# in the same order, so the count names a point on all of them.
_entered = 0


class ProcessFailed(UserError):
  """Another process of the run failed; this one stopped at the point where it waited for it."""

  def __init__(self, process: int, message: str):
    super().__init__(f'Process {process} of this multi-process run failed, so process '
                     f'{jax.process_index()} stopped too: {message}')
    self.process = process


def _multi_process() -> bool:
  # jax.distributed first: asking jax.process_count() would start the backends of a
  # single-process program that fails before it has used them.
  return jax.distributed.is_initialized() and jax.process_count() > 1


def _client():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.multihost.get_jax_distributed_client()


def _key(point: int, process: int) -> str:
  return f'{_PREFIX}/{point}/{process}'


def sync(name: str, value: Any = None) -> list[Any]:
  """Waits until every process has reached this point; returns each one's ``value``.

  With one process, returns ``[value]`` at once.

  Args:
    name: What the point is; every process must pass the same points in the same order.
    value: Anything JSON can hold, for the others to read.

  Returns:
    The processes' values, in process order.

  Raises:
    ProcessFailed: another process failed before reaching this point.
    RuntimeError: the processes disagree about the point (a bug: they would deadlock).
  """
  global _entered
  if not _multi_process():
    return [value]
  _entered += 1
  point, me = _entered, jax.process_index()
  client = _client()
  client.key_value_set(_key(point, me), json.dumps({'point': name, 'value': value}))
  deadline = time.monotonic() + TIMEOUT_SECONDS
  values = []
  for process in range(jax.process_count()):
    timeout_ms = max(1, int(1000 * (deadline - time.monotonic())))
    record = json.loads(client.blocking_key_value_get(_key(point, process), timeout_ms))
    if 'failed' in record:
      raise ProcessFailed(process, record['failed'])
    if record['point'] != name:
      raise RuntimeError(f'Process {me} is at sync point {name!r} while process {process} is at '
                         f'{record["point"]!r}.')
    values.append(record['value'])
  if point > 1:
    # Every process posted this point after it had read the previous one: no one reads ours
    # of that one again.
    client.key_value_delete(_key(point - 1, me))
  return values


def agree(name: str, value: Any) -> Any:
  """Process 0's ``value``, on every process, at a sync point (see :func:`sync`).

  For facts that process 0 alone reads or keeps (a file it writes, the best score so far),
  so that every process takes the same branch after them.
  """
  return sync(name, value)[0]


def report_failure(error: BaseException) -> None:
  """Tells the other processes that this one ends with ``error``.

  They stop with :class:`ProcessFailed` at the next point, or at once if they wait there
  already. Does nothing with one process, and for a :class:`ProcessFailed` (the process that
  failed first has told them). Never raises: the error being reported is what matters.
  """
  global _entered
  if isinstance(error, ProcessFailed) or not _multi_process():
    return
  _entered += 1
  try:
    _client().key_value_set(_key(_entered, jax.process_index()),
                            json.dumps({'failed': _describe(error)}))
  except Exception:  # pylint: disable=broad-except
    pass  # The coordination service is gone as well; JAX ends the other processes then.


def _describe(error: BaseException) -> str:
  """``error`` in one line: a UserError's own, else its type and first line (a refused write:
  the file and the reason)."""
  message = str(error) if isinstance(error, UserError) else write_errors.describe(error)
  return ' '.join(message.split())
