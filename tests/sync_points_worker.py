"""Worker for test_sync_points: one of two processes meeting at dcgan_jax.sync_points.

Usage: python sync_points_worker.py SCENARIO PROCESS_ID PORT

Both processes meet at two points and print, as one JSON line, the values they exchanged there;
then, in scenario
  fail: process 1 fails (and says so), while process 0 waits for it at the third point;
  disagree: the processes name different third points (a bug in the program).
The error a process stops with is printed as one line (exit status 2).
"""
import json
import sys


def main():
  scenario, process_id, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id, initialization_timeout=60)
  from dcgan_jax import sync_points  # pylint: disable=g-import-not-at-top
  from dcgan_jax.errors import (UserError,  # pylint: disable=g-import-not-at-top
                                exit_with_user_error)
  seen = [sync_points.sync('first', {'process': process_id}),
          sync_points.agree('second', process_id == 0)]
  print(json.dumps(seen), flush=True)
  try:
    if scenario == 'fail' and process_id == 1:
      try:
        raise UserError('The shard of process 1 is empty; use a larger split.')
      except UserError as e:
        sync_points.report_failure(e)
        raise
    sync_points.sync('third' if scenario == 'fail' else f'third_{process_id}')
  except (UserError, RuntimeError) as e:
    exit_with_user_error(e)


if __name__ == '__main__':
  main()
